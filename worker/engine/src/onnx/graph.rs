//! A small builder over candle-onnx's prost-generated ONNX types: initializers, nodes with
//! attributes and generated output names, typed graph inputs and outputs with symbolic axes.
//! Pure: it only assembles a [`ModelProto`].

use candle_onnx::onnx::attribute_proto::AttributeType;
use candle_onnx::onnx::tensor_proto::DataType;
use candle_onnx::onnx::tensor_shape_proto::{Dimension, dimension};
use candle_onnx::onnx::type_proto::{self, Value};
use candle_onnx::onnx::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The ONNX opset the exporter writes (LayerNormalization is an ONNX op from 17 on).
pub const OPSET: i64 = 17;
/// The IR version matching [`OPSET`] (ONNX 1.12).
pub const IR_VERSION: i64 = 8;

/// A node attribute.
pub enum Attr {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f32),
    /// A list of integers.
    Ints(Vec<i64>),
}

/// One axis of a graph input or output: fixed, or named (dynamic).
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A symbolic size, e.g. `batch`.
    Named(&'static str),
}

/// Builds a graph node by node.
#[derive(Default)]
pub struct GraphBuilder {
    /// The graph so far.
    pub graph: GraphProto,
    counter: usize,
}

impl GraphBuilder {
    /// Continues building `graph`.
    pub fn from_graph(graph: GraphProto) -> Self {
        Self { graph, counter: 0 }
    }

    /// Adds an fp32 initializer; returns its name.
    pub fn f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        assert_eq!(dims.iter().product::<usize>(), data.len(), "{name}: shape and data disagree");
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, dims, DataType::Float, raw)
    }

    /// Adds an int8 initializer; returns its name.
    pub fn i8(&mut self, name: &str, dims: &[usize], data: &[i8]) -> String {
        assert_eq!(dims.iter().product::<usize>(), data.len(), "{name}: shape and data disagree");
        self.initializer(name, dims, DataType::Int8, data.iter().map(|&v| v as u8).collect())
    }

    /// Adds an int64 initializer; returns its name.
    pub fn i64(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        assert_eq!(dims.iter().product::<usize>(), data.len(), "{name}: shape and data disagree");
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, dims, DataType::Int64, raw)
    }

    fn initializer(&mut self, name: &str, dims: &[usize], data_type: DataType, raw_data: Vec<u8>) -> String {
        self.graph.initializer.push(TensorProto {
            name: name.to_string(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type as i32,
            raw_data,
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds a node `op(inputs)` with one output; returns the output's name (`<prefix>/<op>_<n>`).
    pub fn node(&mut self, prefix: &str, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let out = self.fresh(prefix, op);
        self.node_into(prefix, op, inputs, &[&out], attrs);
        out
    }

    /// Adds a node with the given output names.
    pub fn node_into(&mut self, prefix: &str, op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<(&str, Attr)>) {
        let name = self.fresh(prefix, op);
        self.graph.node.push(NodeProto {
            name,
            op_type: op.to_string(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs.into_iter().map(|(n, a)| attribute(n, a)).collect(),
            ..Default::default()
        });
    }

    /// A new unique value name.
    pub fn fresh(&mut self, prefix: &str, what: &str) -> String {
        self.counter += 1;
        format!("{prefix}/{what}_{}", self.counter)
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, elem: DataType, dims: &[Dim]) {
        self.graph.input.push(value_info(name, elem, dims));
    }

    /// Declares a graph output.
    pub fn output(&mut self, name: &str, elem: DataType, dims: &[Dim]) {
        self.graph.output.push(value_info(name, elem, dims));
    }

    /// The model: this graph at [`OPSET`], with `metadata` as metadata properties.
    pub fn finish(self, name: &str, metadata: &[(&str, String)]) -> ModelProto {
        let graph = GraphProto { name: name.to_string(), ..self.graph };
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
            producer_name: "distillery-worker".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(graph),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto { key: k.to_string(), value: v.clone() })
                .collect(),
            ..Default::default()
        }
    }
}

fn attribute(name: &str, value: Attr) -> AttributeProto {
    let mut a = AttributeProto { name: name.to_string(), ..Default::default() };
    match value {
        Attr::Int(i) => {
            a.r#type = AttributeType::Int as i32;
            a.i = i;
        }
        Attr::Float(f) => {
            a.r#type = AttributeType::Float as i32;
            a.f = f;
        }
        Attr::Ints(v) => {
            a.r#type = AttributeType::Ints as i32;
            a.ints = v;
        }
    }
    a
}

fn value_info(name: &str, elem: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(v) => dimension::Value::DimValue(*v),
                Dim::Named(n) => dimension::Value::DimParam(n.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The fp32 values of an fp32 initializer stored as raw data.
pub fn f32_values(t: &TensorProto) -> Option<Vec<f32>> {
    (t.data_type == DataType::Float as i32 && !t.raw_data.is_empty())
        .then(|| t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

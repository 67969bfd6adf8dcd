//! The KServe V2 Open Inference Protocol's JSON messages, for a text classifier: parsing an
//! inference request into what the model runs ([`parse_infer`], pure, so it is fuzzed), and
//! writing the response.
//!
//! A request carries either a `BYTES` tensor of texts (tokenized by the server) or `INT64`/`INT32`
//! `input_ids` with an optional `attention_mask` (and `token_type_ids`, which must be 0 for these
//! single-segment models). The client may name the outputs it wants among `logits`,
//! `probabilities`, `label` and `embedding`; without `outputs` it gets the first three.
//! Everything malformed is a [`ProtocolError`]: a 400 whose message names the field.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The text input's conventional name (any single `BYTES` input is taken as the texts).
pub const TEXT_INPUT: &str = "text";
/// Outputs a client may ask for, in the order they are returned by default.
pub const OUTPUT_NAMES: [&str; 4] = ["logits", "probabilities", "label", "embedding"];

/// A request the server cannot run as sent (HTTP 400); the message says what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ProtocolError(pub String);

fn bad(message: impl Into<String>) -> ProtocolError {
    ProtocolError(message.into())
}

/// An output the model can return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Raw class scores, `FP32 [n, classes]`.
    Logits,
    /// Softmax of the logits, `FP32 [n, classes]`.
    Probabilities,
    /// The most probable class's name, `BYTES [n]`.
    Label,
    /// The pooled embedding, `FP32 [n, hidden]`.
    Embedding,
}

impl Output {
    /// Its name in requests and responses.
    pub fn name(self) -> &'static str {
        OUTPUT_NAMES[self as usize]
    }

    fn parse(name: &str) -> Option<Self> {
        [Self::Logits, Self::Probabilities, Self::Label, Self::Embedding].into_iter().find(|o| o.name() == name)
    }
}

/// What the model is asked to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inputs {
    /// Texts, tokenized by the server.
    Texts(Vec<String>),
    /// Token ids, one sequence per row (padding removed).
    Tokens(Vec<Vec<u32>>),
}

impl Inputs {
    /// Number of sequences.
    pub fn len(&self) -> usize {
        match self {
            Self::Texts(t) => t.len(),
            Self::Tokens(t) => t.len(),
        }
    }

    /// Whether there are none (never true for a parsed request).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A validated inference request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InferRequest {
    /// The client's request id, echoed in the response.
    pub id: Option<String>,
    /// The inputs.
    pub inputs: Inputs,
    /// The outputs to return, in order.
    pub outputs: Vec<Output>,
}

pub use distillery_model::artifact::Limits;

#[derive(Deserialize)]
struct RawRequest {
    #[serde(default)]
    id: Option<Value>,
    inputs: Vec<RawInput>,
    #[serde(default)]
    outputs: Option<Vec<RawOutput>>,
}

#[derive(Deserialize)]
struct RawInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Value,
}

#[derive(Deserialize)]
struct RawOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Value>,
}

/// Parses and validates an inference request body.
pub fn parse_infer(body: &[u8], limits: Limits) -> Result<InferRequest, ProtocolError> {
    let raw: RawRequest = serde_json::from_slice(body).map_err(|e| bad(format!("invalid inference request: {e}")))?;
    let id = match raw.id {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(bad("id must be a string")),
    };
    let outputs = match raw.outputs {
        None => vec![Output::Logits, Output::Probabilities, Output::Label],
        Some(list) if list.is_empty() => {
            return Err(bad(
                "outputs is empty: name at least one of logits, probabilities, label, embedding, or leave outputs out",
            ));
        }
        Some(list) => {
            let mut outputs = Vec::with_capacity(list.len());
            for (k, o) in list.iter().enumerate() {
                let output = Output::parse(&o.name).ok_or_else(|| {
                    bad(format!(
                        "outputs[{k}].name {:?} is not an output of this model: use one of {}",
                        o.name,
                        OUTPUT_NAMES.join(", ")
                    ))
                })?;
                if o.parameters.as_ref().and_then(|p| p.get("binary_data")).and_then(Value::as_bool) == Some(true) {
                    return Err(bad(format!(
                        "outputs[{k}].parameters.binary_data: binary tensor data is not supported; ask for JSON"
                    )));
                }
                if outputs.contains(&output) {
                    return Err(bad(format!("outputs[{k}]: {:?} is asked for twice", o.name)));
                }
                outputs.push(output);
            }
            outputs
        }
    };
    let inputs = inputs(&raw.inputs, limits)?;
    Ok(InferRequest { id, inputs, outputs })
}

fn inputs(raw: &[RawInput], limits: Limits) -> Result<Inputs, ProtocolError> {
    if raw.is_empty() {
        return Err(bad("inputs is empty: send a BYTES tensor named \"text\", or INT64 input_ids"));
    }
    let position = |name: &str| raw.iter().position(|i| i.name == name);
    for (k, input) in raw.iter().enumerate() {
        let known = ["input_ids", "attention_mask", "token_type_ids"].contains(&input.name.as_str())
            || input.datatype == "BYTES";
        if !known {
            return Err(bad(format!(
                "inputs[{k}] {:?} ({}) is not an input of this model: send a BYTES tensor named \"text\", or INT64 input_ids with an optional attention_mask",
                input.name, input.datatype
            )));
        }
        if raw[..k].iter().any(|other| other.name == input.name) {
            return Err(bad(format!("inputs[{k}]: input {:?} is given twice", input.name)));
        }
    }
    let texts: Vec<usize> = (0..raw.len()).filter(|&k| raw[k].datatype == "BYTES").collect();
    match (texts.as_slice(), position("input_ids")) {
        ([k], None) if raw.len() == 1 => Ok(Inputs::Texts(text_tensor(*k, &raw[*k])?)),
        ([_], None) => Err(bad("a text request takes one BYTES input and nothing else")),
        ([], Some(k)) => {
            let ids = int_tensor(k, &raw[k])?;
            let mask = position("attention_mask").map(|m| int_tensor(m, &raw[m])).transpose()?;
            let types = position("token_type_ids").map(|t| int_tensor(t, &raw[t])).transpose()?;
            token_rows(&ids, mask.as_ref(), types.as_ref(), limits).map(Inputs::Tokens)
        }
        ([], None) => Err(bad("input_ids is missing: send a BYTES tensor named \"text\", or INT64 input_ids")),
        _ => Err(bad("send either texts (one BYTES input) or input_ids, not both")),
    }
}

/// The element count a shape declares, refusing negative or overflowing dimensions.
fn element_count(k: usize, shape: &[i64]) -> Result<usize, ProtocolError> {
    shape.iter().try_fold(1usize, |acc, &d| {
        let d = usize::try_from(d).map_err(|_| bad(format!("inputs[{k}].shape has a negative dimension {d}")))?;
        acc.checked_mul(d).ok_or_else(|| bad(format!("inputs[{k}].shape {shape:?} is too large")))
    })
}

/// The leaves of `data`, flattened (the protocol allows nested or flat row-major arrays).
fn flatten<'a>(k: usize, data: &'a Value, out: &mut Vec<&'a Value>, limit: usize) -> Result<(), ProtocolError> {
    match data {
        Value::Array(items) => {
            for item in items {
                flatten(k, item, out, limit)?;
            }
            Ok(())
        }
        leaf if out.len() < limit => {
            out.push(leaf);
            Ok(())
        }
        _ => Err(bad(format!("inputs[{k}].data holds more elements than its shape declares"))),
    }
}

fn checked_data(k: usize, input: &RawInput) -> Result<Vec<&Value>, ProtocolError> {
    if !input.data.is_array() {
        return Err(bad(format!("inputs[{k}].data must be an array")));
    }
    let expected = element_count(k, &input.shape)?;
    let mut leaves = Vec::new();
    flatten(k, &input.data, &mut leaves, expected)?;
    if leaves.len() != expected {
        return Err(bad(format!(
            "inputs[{k}] {:?}: shape {:?} declares {expected} elements but data holds {}",
            input.name,
            input.shape,
            leaves.len()
        )));
    }
    Ok(leaves)
}

fn text_tensor(k: usize, input: &RawInput) -> Result<Vec<String>, ProtocolError> {
    let rows = match input.shape.as_slice() {
        [n] | [n, 1] => *n,
        _ => {
            return Err(bad(format!(
                "inputs[{k}] {:?}: a text tensor has shape [n] or [n, 1], not {:?}",
                input.name, input.shape
            )));
        }
    };
    if rows == 0 {
        return Err(bad(format!("inputs[{k}] {:?} holds no texts", input.name)));
    }
    checked_data(k, input)?
        .into_iter()
        .enumerate()
        .map(|(j, v)| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(format!("inputs[{k}].data[{j}] must be a string (datatype BYTES)")))
        })
        .collect()
}

/// An integer tensor of shape `[rows, columns]`.
struct IntTensor {
    rows: usize,
    columns: usize,
    values: Vec<i64>,
}

fn int_tensor(k: usize, input: &RawInput) -> Result<IntTensor, ProtocolError> {
    if !["INT64", "INT32"].contains(&input.datatype.as_str()) {
        return Err(bad(format!(
            "inputs[{k}] {:?} has datatype {}; it must be INT64 or INT32",
            input.name, input.datatype
        )));
    }
    let (rows, columns) = match input.shape.as_slice() {
        &[r, c] if r > 0 && c > 0 => (r as usize, c as usize),
        _ => {
            return Err(bad(format!(
                "inputs[{k}] {:?}: shape must be [batch, sequence] with both above 0, not {:?}",
                input.name, input.shape
            )));
        }
    };
    let values = checked_data(k, input)?
        .into_iter()
        .enumerate()
        .map(|(j, v)| {
            v.as_i64().ok_or_else(|| bad(format!("inputs[{k}] {:?}: data[{j}] = {v} is not an integer", input.name)))
        })
        .collect::<Result<_, _>>()?;
    Ok(IntTensor { rows, columns, values })
}

fn token_rows(
    ids: &IntTensor,
    mask: Option<&IntTensor>,
    types: Option<&IntTensor>,
    limits: Limits,
) -> Result<Vec<Vec<u32>>, ProtocolError> {
    for (name, t) in [("attention_mask", mask), ("token_type_ids", types)] {
        if let Some(t) = t
            && (t.rows, t.columns) != (ids.rows, ids.columns)
        {
            return Err(bad(format!(
                "{name} has shape [{}, {}] but input_ids has [{}, {}]",
                t.rows, t.columns, ids.rows, ids.columns
            )));
        }
    }
    if let Some(t) = types
        && let Some(j) = t.values.iter().position(|&v| v != 0)
    {
        return Err(bad(format!(
            "token_type_ids[{}][{}] = {}: this model takes a single segment, so every token type must be 0",
            j / t.columns,
            j % t.columns,
            t.values[j]
        )));
    }
    let mut rows = Vec::with_capacity(ids.rows);
    for r in 0..ids.rows {
        let row = &ids.values[r * ids.columns..(r + 1) * ids.columns];
        let length = match mask {
            None => ids.columns,
            Some(m) => {
                let m = &m.values[r * ids.columns..(r + 1) * ids.columns];
                if let Some(j) = m.iter().position(|&v| v != 0 && v != 1) {
                    return Err(bad(format!("attention_mask[{r}][{j}] = {}: a mask holds 0 and 1 only", m[j])));
                }
                let length = m.iter().take_while(|&&v| v == 1).count();
                if m[length..].contains(&1) {
                    return Err(bad(format!(
                        "attention_mask[{r}]: the 1s must come first and the padding (0s) after them"
                    )));
                }
                if length == 0 {
                    return Err(bad(format!("attention_mask[{r}] masks every token")));
                }
                length
            }
        };
        if length > limits.max_positions {
            return Err(bad(format!(
                "input_ids[{r}] has {length} tokens; this model takes at most {}",
                limits.max_positions
            )));
        }
        let mut tokens = Vec::with_capacity(length);
        for (j, &id) in row[..length].iter().enumerate() {
            match u32::try_from(id) {
                Ok(id) if (id as usize) < limits.vocab_size => tokens.push(id),
                _ => {
                    return Err(bad(format!(
                        "input_ids[{r}][{j}] = {id} is outside the vocabulary (0..{})",
                        limits.vocab_size
                    )));
                }
            }
        }
        rows.push(tokens);
    }
    Ok(rows)
}

/// One output tensor of a response.
#[derive(Serialize, Debug)]
pub struct OutputTensor {
    /// Output name.
    pub name: &'static str,
    /// `FP32` or `BYTES`.
    pub datatype: &'static str,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Row-major data.
    pub data: TensorData,
}

/// Row-major data of an output tensor.
#[derive(Serialize, Debug)]
#[serde(untagged)]
pub enum TensorData {
    /// `FP32`.
    Floats(Vec<f32>),
    /// `BYTES`.
    Strings(Vec<String>),
}

/// An inference response.
#[derive(Serialize, Debug)]
pub struct InferResponse<'a> {
    /// The model's name.
    pub model_name: &'a str,
    /// The model's version (the served file's sha256, shortened).
    pub model_version: &'a str,
    /// The request's id, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The outputs asked for.
    pub outputs: Vec<OutputTensor>,
}

/// What the model computed for one request: a row per sequence.
#[derive(Debug, Clone, Default)]
pub struct Prediction {
    /// Logits.
    pub logits: Vec<Vec<f32>>,
    /// Pooled embeddings.
    pub embedding: Vec<Vec<f32>>,
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

pub use distillery_model::argmax;

/// The output tensors `outputs` asks for, from `prediction`.
pub fn output_tensors(outputs: &[Output], prediction: &Prediction, labels: &[String]) -> Vec<OutputTensor> {
    let rows = prediction.logits.len();
    let matrix = |m: &[Vec<f32>]| {
        let width = m.first().map_or(0, Vec::len);
        (vec![rows, width], TensorData::Floats(m.iter().flatten().copied().collect()))
    };
    outputs
        .iter()
        .map(|&o| {
            let (datatype, (shape, data)) = match o {
                Output::Logits => ("FP32", matrix(&prediction.logits)),
                Output::Embedding => ("FP32", matrix(&prediction.embedding)),
                Output::Probabilities => {
                    let p: Vec<Vec<f32>> = prediction.logits.iter().map(|l| softmax(l)).collect();
                    ("FP32", matrix(&p))
                }
                Output::Label => {
                    let names = prediction.logits.iter().map(|l| labels[argmax(l)].clone()).collect();
                    ("BYTES", (vec![rows], TensorData::Strings(names)))
                }
            };
            OutputTensor { name: o.name(), datatype, shape, data }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: Limits = Limits { vocab_size: 100, max_positions: 8 };

    fn parse(v: Value) -> Result<InferRequest, ProtocolError> {
        parse_infer(v.to_string().as_bytes(), LIMITS)
    }

    fn message(v: Value) -> String {
        parse(v).unwrap_err().0
    }

    #[test]
    fn texts_with_an_id_and_default_outputs() {
        let r = parse(json!({"id": "r-1", "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["good", "bad"]}]}))
            .unwrap();
        assert_eq!(r.id.as_deref(), Some("r-1"));
        assert_eq!(r.inputs, Inputs::Texts(vec!["good".into(), "bad".into()]));
        assert_eq!(r.outputs, [Output::Logits, Output::Probabilities, Output::Label]);
        // [n, 1] and nested data are the same texts.
        let r =
            parse(json!({"inputs": [{"name": "t", "shape": [2, 1], "datatype": "BYTES", "data": [["good"], ["bad"]]}],
                             "outputs": [{"name": "embedding"}, {"name": "label"}]}))
            .unwrap();
        assert_eq!(r.inputs.len(), 2);
        assert_eq!(r.outputs, [Output::Embedding, Output::Label]);
    }

    #[test]
    fn token_ids_drop_trailing_padding() {
        let r = parse(json!({"inputs": [
            {"name": "input_ids", "shape": [2, 3], "datatype": "INT64", "data": [[101, 7, 102], [101, 102, 0]]},
            {"name": "attention_mask", "shape": [2, 3], "datatype": "INT64", "data": [1, 1, 1, 1, 1, 0]},
            {"name": "token_type_ids", "shape": [2, 3], "datatype": "INT64", "data": [0, 0, 0, 0, 0, 0]}
        ]}));
        assert!(r.is_err(), "101 is outside a vocabulary of 100");
        let r = parse(json!({"inputs": [
            {"name": "input_ids", "shape": [2, 3], "datatype": "INT32", "data": [[1, 7, 2], [1, 2, 0]]},
            {"name": "attention_mask", "shape": [2, 3], "datatype": "INT64", "data": [1, 1, 1, 1, 1, 0]}
        ]}))
        .unwrap();
        assert_eq!(r.inputs, Inputs::Tokens(vec![vec![1, 7, 2], vec![1, 2]]));
    }

    #[test]
    fn every_bad_request_names_what_to_fix() {
        let text = |shape: Value, data: Value| json!({"inputs": [{"name": "text", "shape": shape, "datatype": "BYTES", "data": data}]});
        let ids = |data: Value| json!({"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": data}]});
        for (request, expected) in [
            (json!({}), "missing field `inputs`"),
            (json!({"inputs": []}), "inputs is empty"),
            (json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES"}]}), "missing field `data`"),
            (text(json!([2]), json!(["only one"])), "declares 2 elements but data holds 1"),
            (text(json!([1]), json!(["a", "b"])), "more elements than its shape"),
            (text(json!([1]), json!([5])), "must be a string"),
            (text(json!([0]), json!([])), "holds no texts"),
            (text(json!([1, 2]), json!(["a", "b"])), "shape [n] or [n, 1]"),
            (text(json!([-1]), json!([])), "negative dimension"),
            (text(json!([1]), json!("a")), "must be an array"),
            (ids(json!([1, 2, 3.5])), "not an integer"),
            (ids(json!([1, 2, -3])), "outside the vocabulary"),
            (ids(json!([1, 2, 100])), "outside the vocabulary"),
            (
                json!({"inputs": [{"name": "input_ids", "shape": [1, 9], "datatype": "INT64", "data": [1,1,1,1,1,1,1,1,1]}]}),
                "at most 8",
            ),
            (
                json!({"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}),
                "must be INT64 or INT32",
            ),
            (
                json!({"inputs": [{"name": "input_ids", "shape": [2], "datatype": "INT64", "data": [1, 2]}]}),
                "[batch, sequence]",
            ),
            (
                json!({"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [1]}]}),
                "not an input of this model",
            ),
            (
                json!({"inputs": [{"name": "attention_mask", "shape": [1, 1], "datatype": "INT64", "data": [1]}]}),
                "input_ids is missing",
            ),
            (
                json!({"inputs": [
                {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]},
                {"name": "attention_mask", "shape": [1, 3], "datatype": "INT64", "data": [1, 1, 1]}]}),
                "attention_mask has shape [1, 3]",
            ),
            (
                json!({"inputs": [
                {"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]},
                {"name": "attention_mask", "shape": [1, 3], "datatype": "INT64", "data": [1, 0, 1]}]}),
                "the 1s must come first",
            ),
            (
                json!({"inputs": [
                {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]},
                {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [2, 1]}]}),
                "0 and 1 only",
            ),
            (
                json!({"inputs": [
                {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]},
                {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [0, 0]}]}),
                "masks every token",
            ),
            (
                json!({"inputs": [
                {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]},
                {"name": "token_type_ids", "shape": [1, 2], "datatype": "INT64", "data": [0, 1]}]}),
                "token_type_ids[0][1] = 1",
            ),
            (
                json!({"inputs": [
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]},
                {"name": "input_ids", "shape": [1, 1], "datatype": "INT64", "data": [1]}]}),
                "not both",
            ),
            (
                json!({"inputs": [
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]},
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["b"]}]}),
                "given twice",
            ),
            (
                json!({"inputs": [{"name": "text", "shape": [4611686018427387904i64, 4], "datatype": "BYTES", "data": []}]}),
                "shape [n] or [n, 1]",
            ),
            (
                json!({"inputs": [{"name": "input_ids", "shape": [4611686018427387904i64, 4], "datatype": "INT64", "data": []}]}),
                "too large",
            ),
            (json!({"id": 7, "inputs": []}), "id must be a string"),
            (
                json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}], "outputs": [{"name": "scores"}]}),
                "use one of logits",
            ),
            (
                json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}], "outputs": []}),
                "outputs is empty",
            ),
            (
                json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
                    "outputs": [{"name": "label"}, {"name": "label"}]}),
                "asked for twice",
            ),
            (
                json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
                    "outputs": [{"name": "label", "parameters": {"binary_data": true}}]}),
                "binary tensor data",
            ),
        ] {
            let got = message(request.clone());
            assert!(got.contains(expected), "{request}: expected {expected:?} in {got:?}");
        }
        assert!(parse_infer(b"{not json", LIMITS).unwrap_err().0.contains("invalid inference request"));
        assert!(parse_infer(b"", LIMITS).is_err());
    }

    #[test]
    fn softmax_and_labels() {
        let p = softmax(&[0.0, 0.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6);
        let p = softmax(&[1000.0, 0.0]);
        assert!((p[0] - 1.0).abs() < 1e-6 && p[1] >= 0.0, "no overflow: {p:?}");
        let q = softmax(&[1.0, 2.0, 3.0]);
        // e^1, e^2, e^3 normalised: 0.0900, 0.2447, 0.6652.
        for (got, want) in q.iter().zip([0.09003057, 0.24472847, 0.66524096]) {
            assert!((got - want).abs() < 1e-6, "{q:?}");
        }
        assert_eq!(argmax(&[0.1, 0.7, 0.7]), 1);
        let prediction = Prediction { logits: vec![vec![2.0, -1.0], vec![0.0, 3.0]], embedding: vec![vec![0.5; 3]; 2] };
        let labels = ["fresh".to_string(), "rotten".to_string()];
        let out = output_tensors(&[Output::Label, Output::Embedding], &prediction, &labels);
        assert_eq!(
            serde_json::to_value(&out).unwrap(),
            json!([
                {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["fresh", "rotten"]},
                {"name": "embedding", "datatype": "FP32", "shape": [2, 3], "data": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}
            ])
        );
    }
}

//! The inference-request parser under random input (proptest): arbitrary bytes, arbitrary JSON,
//! and valid requests with one part mutated. It never panics; whatever it refuses is a
//! `ProtocolError` (the server's 400) with a message; whatever it accepts respects the model's
//! limits. The HTTP layer turns every `ProtocolError` into a 400 (`http::ApiError::status`).

use distillery_server::http::ApiError;
use distillery_server::protocol::{Inputs, Limits, parse_infer};
use proptest::prelude::*;
use serde_json::{Value, json};

const LIMITS: Limits = Limits { vocab_size: 1000, max_positions: 64 };

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("text"),
            Just("input_ids"),
            Just("attention_mask"),
            Just("token_type_ids"),
            Just("BYTES"),
            Just("INT64"),
            Just("label")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("inputs".to_string()),
                    Just("outputs".to_string()),
                    Just("name".to_string()),
                    Just("shape".to_string()),
                    Just("datatype".to_string()),
                    Just("data".to_string()),
                    Just("id".to_string()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid request, then one field replaced by arbitrary JSON.
fn mutated_request() -> impl Strategy<Value = Value> {
    let base = prop_oneof![
        prop::collection::vec(".{0,20}", 1..5).prop_map(|texts| {
            json!({"id": "x", "inputs": [{"name": "text", "shape": [texts.len()], "datatype": "BYTES", "data": texts}],
                   "outputs": [{"name": "label"}]})
        }),
        (1usize..4, 1usize..8).prop_map(|(rows, cols)| {
            json!({"inputs": [
                {"name": "input_ids", "shape": [rows, cols], "datatype": "INT64", "data": vec![5; rows * cols]},
                {"name": "attention_mask", "shape": [rows, cols], "datatype": "INT64", "data": vec![1; rows * cols]}]})
        }),
    ];
    let pointer = prop_oneof![
        Just("/id"),
        Just("/inputs"),
        Just("/inputs/0"),
        Just("/inputs/0/name"),
        Just("/inputs/0/shape"),
        Just("/inputs/0/shape/0"),
        Just("/inputs/0/datatype"),
        Just("/inputs/0/data"),
        Just("/inputs/0/data/0"),
        Just("/inputs/1/data/0"),
        Just("/outputs"),
        Just("/outputs/0/name"),
    ];
    (base, pointer, any_json()).prop_map(|(mut request, pointer, replacement)| {
        if let Some(slot) = request.pointer_mut(pointer) {
            *slot = replacement;
        }
        request
    })
}

fn check(body: &[u8]) {
    match parse_infer(body, LIMITS) {
        Ok(request) => {
            assert!(!request.inputs.is_empty());
            assert!(!request.outputs.is_empty());
            if let Inputs::Tokens(rows) = &request.inputs {
                for row in rows {
                    assert!(!row.is_empty() && row.len() <= LIMITS.max_positions);
                    assert!(row.iter().all(|&id| (id as usize) < LIMITS.vocab_size));
                }
            }
        }
        Err(e) => {
            assert!(!e.0.is_empty(), "an error says what is wrong");
            assert_eq!(ApiError::BadRequest(e.0).status().as_u16(), 400);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        check(&body);
    }

    #[test]
    fn arbitrary_json_never_panics(value in any_json()) {
        check(value.to_string().as_bytes());
    }

    #[test]
    fn mutated_requests_are_parsed_or_refused_with_a_reason(request in mutated_request()) {
        check(request.to_string().as_bytes());
    }
}

#[test]
fn deeply_nested_and_huge_shapes_are_refused_not_crashed() {
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    check(
        format!("{{\"inputs\": [{{\"name\": \"text\", \"shape\": [1], \"datatype\": \"BYTES\", \"data\": {deep}}}]}}")
            .as_bytes(),
    );
    check(br#"{"inputs": [{"name": "input_ids", "shape": [9223372036854775807, 9223372036854775807], "datatype": "INT64", "data": [1]}]}"#);
    check(br#"{"inputs": [{"name": "text", "shape": [18446744073709551615], "datatype": "BYTES", "data": ["a"]}]}"#);
}

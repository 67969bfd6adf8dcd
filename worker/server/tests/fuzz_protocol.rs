//! The inference-request parser under random input (proptest): arbitrary bytes, arbitrary JSON,
//! and valid requests with one part mutated. It never panics; whatever it refuses is a
//! `ProtocolError` (the server's 400) with a message; whatever it accepts holds what the body
//! holds and respects the model's limits. That a refusal reaches the client as a 400 is checked
//! over HTTP in `tests/tests/server.rs`.

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

/// Parses `body` and checks the outcome against the request itself: an accepted request carries
/// exactly the texts (or as many token rows as its shape says) that the body holds, within the
/// model's limits; a refused one says what is wrong. Returns the outcome for tests that expect one.
fn check(body: &[u8]) -> Result<(), String> {
    match parse_infer(body, LIMITS) {
        Ok(request) => {
            let sent: Value = serde_json::from_slice(body).expect("an accepted body is JSON");
            let first = &sent["inputs"][0];
            assert!(!request.outputs.is_empty());
            match &request.inputs {
                Inputs::Texts(texts) => {
                    // The protocol allows nested data and a shape of [n] or [n, 1].
                    let mut data = vec![];
                    flatten(&first["data"], &mut data);
                    let accepted: Vec<&str> = texts.iter().map(String::as_str).collect();
                    assert_eq!(accepted, data, "the texts accepted are the texts sent");
                    let n = texts.len();
                    let shape = &first["shape"];
                    assert!(*shape == json!([n]) || *shape == json!([n, 1]), "and the shape said as many: {shape}");
                }
                Inputs::Tokens(rows) => {
                    let ids = sent["inputs"].as_array().unwrap().iter().find(|i| i["name"] == "input_ids").unwrap();
                    assert_eq!(Some(rows.len() as u64), ids["shape"][0].as_u64(), "one row per shape[0]");
                    for row in rows {
                        assert!(!row.is_empty() && row.len() <= LIMITS.max_positions);
                        assert!(row.iter().all(|&id| (id as usize) < LIMITS.vocab_size));
                    }
                }
            }
            Ok(())
        }
        Err(e) => {
            assert!(e.0.len() > 10, "an error says what is wrong: {:?}", e.0);
            Err(e.0)
        }
    }
}

/// The strings of `value`, depth first (nested arrays flattened, as the protocol reads them).
fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        Value::String(s) => out.push(s),
        other => panic!("accepted a text that is not a string: {other}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = check(&body);
    }

    #[test]
    fn arbitrary_json_never_panics(value in any_json()) {
        let _ = check(value.to_string().as_bytes());
    }

    #[test]
    fn mutated_requests_are_parsed_or_refused_with_a_reason(request in mutated_request()) {
        let _ = check(request.to_string().as_bytes());
    }
}

#[test]
fn deeply_nested_and_huge_shapes_are_refused_not_crashed() {
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    let refused = |body: &[u8]| check(body).expect_err("refused");
    let nested = refused(
        format!("{{\"inputs\": [{{\"name\": \"text\", \"shape\": [1], \"datatype\": \"BYTES\", \"data\": {deep}}}]}}")
            .as_bytes(),
    );
    assert!(nested.contains("recursion limit"), "{nested}");
    let huge = refused(
        br#"{"inputs": [{"name": "input_ids", "shape": [9223372036854775807, 9223372036854775807], "datatype": "INT64", "data": [1]}]}"#,
    );
    assert!(huge.contains("shape"), "{huge}");
    let overflow = refused(
        br#"{"inputs": [{"name": "text", "shape": [18446744073709551615], "datatype": "BYTES", "data": ["a"]}]}"#,
    );
    assert!(overflow.contains("18446744073709551615"), "the value that does not fit is named: {overflow}");
}

#[test]
fn valid_requests_are_accepted_with_what_they_hold() {
    assert_eq!(
        check(br#"{"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["good", "bad"]}]}"#),
        Ok(())
    );
    let tokens = json!({"inputs": [
        {"name": "input_ids", "shape": [2, 3], "datatype": "INT64", "data": [5, 6, 7, 8, 9, 0]},
        {"name": "attention_mask", "shape": [2, 3], "datatype": "INT64", "data": [1, 1, 1, 1, 1, 0]}]});
    assert_eq!(check(tokens.to_string().as_bytes()), Ok(()));
    let Inputs::Tokens(rows) = parse_infer(tokens.to_string().as_bytes(), LIMITS).unwrap().inputs else {
        panic!("token ids give token rows")
    };
    assert_eq!(rows, vec![vec![5, 6, 7], vec![8, 9]], "padding removed by the attention mask");
    // Out of the model's limits: refused.
    let too_big = json!({"inputs": [{"name": "input_ids", "shape": [1, 1], "datatype": "INT64", "data": [1000]}]});
    assert!(check(too_big.to_string().as_bytes()).unwrap_err().contains("1000"));
}

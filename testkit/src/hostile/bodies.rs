//! Bodies: workflow definitions, near-valid workflows, every kind of body; methods,
//! content types and credentials.

use super::*;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

pub const STEP_NAMES: &[&str] = &["classify", "a", "b", "c", "route"];
pub const STEP_TYPES: &[&str] = &[
    "agent",
    "http",
    "transform",
    "delay",
    "approval",
    "subworkflow",
    "AGENT",
    "bogus",
    "",
    "agent ",
];

pub fn step_name() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => prop::sample::select(STEP_NAMES).prop_map(|s| json!(s)),
        2 => valid_name().prop_map(Value::String),
        1 => nasty_string().prop_map(Value::String),
        1 => json_value(),
    ]
    .boxed()
}

pub fn opt<T: std::fmt::Debug + Clone + 'static>(
    p: f64,
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    prop::option::weighted(p, s).boxed()
}

pub fn step() -> BoxedStrategy<Value> {
    let core = (
        opt(0.9, step_name()),
        opt(
            0.9,
            prop_oneof![
                8 => prop::sample::select(STEP_TYPES).prop_map(|s| json!(s)),
                1 => json_value(),
            ],
        ),
        opt(
            0.5,
            prop_oneof![valid_name().prop_map(Value::String), json_value()],
        ),
        opt(0.5, nasty_string().prop_map(Value::String)),
        opt(0.2, json_value()),
        opt(
            0.4,
            prop_oneof![
                4 => prop::collection::vec(
                    prop_oneof![
                        4 => prop::sample::select(STEP_NAMES).prop_map(|s| json!(s)),
                        1 => json_value(),
                    ],
                    0..5,
                )
                .prop_map(Value::Array),
                1 => json_value(),
            ],
        ),
        opt(
            0.2,
            prop_oneof![
                3 => template_string(),
                // A condition is one expression; `}}` inside one is a syntax error.
                1 => prop::sample::select(vec!["x }} y", "}}{{", "a }}{% b", "1 }}", "}} {{ x }}"])
                    .prop_map(str::to_string),
            ]
            .prop_map(Value::String),
        ),
    );
    let settings = (
        opt(
            0.25,
            prop_oneof![
                3 => (opt(0.8, number_value()), opt(0.6, number_value()), opt(0.6, number_value()))
                    .prop_map(|(a, b, c)| {
                        let mut m = Map::new();
                        if let Some(a) = a { m.insert("maxAttempts".into(), a); }
                        if let Some(b) = b { m.insert("backoffSeconds".into(), b); }
                        if let Some(c) = c { m.insert("backoffMultiplier".into(), c); }
                        Value::Object(m)
                    }),
                1 => json_value(),
            ],
        ),
        opt(0.25, number_value()),
        opt(0.2, number_value()),
        opt(
            0.2,
            prop_oneof![
                3 => (
                    prop_oneof![
                        3 => prop::sample::select(vec!["GET", "POST", "get", "TRACE", "", "CONNECT"]).prop_map(|s| json!(s)),
                        1 => json_value(),
                    ],
                    prop_oneof![
                        3 => prop::sample::select(vec![
                            "http://127.0.0.1:9/x", "https://example.invalid/{{ variables.a }}",
                            "not a url", "file:///etc/passwd", "", "http://[::1", "{{ x",
                        ]).prop_map(|s| json!(s)),
                        1 => json_value(),
                    ],
                    opt(0.5, json_value()),
                    opt(0.5, json_value()),
                )
                    .prop_map(|(m, u, h, b)| {
                        let mut o = Map::new();
                        o.insert("method".into(), m);
                        o.insert("url".into(), u);
                        if let Some(h) = h { o.insert("headers".into(), h); }
                        if let Some(b) = b { o.insert("body".into(), b); }
                        Value::Object(o)
                    }),
                1 => json_value(),
            ],
        ),
        opt(0.15, json_value()),
        opt(0.2, json_value()),
        opt(
            0.15,
            prop_oneof![
                valid_name().prop_map(|n| json!(format!("wf_{n}"))),
                json_value()
            ],
        ),
        opt(0.15, json_value()),
        opt(0.15, (json_key(), json_value())),
    );
    (core, settings)
        .prop_map(
            |(
                (name, ty, agent, instr, inputs, deps, when),
                (retry, timeout, seconds, request, allow, value, wf, vars, extra),
            )| {
                let mut m = Map::new();
                let mut put = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        m.insert(k.to_string(), v);
                    }
                };
                put("name", name);
                put("type", ty);
                put("agentId", agent);
                put("instructions", instr);
                put("inputs", inputs);
                put("dependsOn", deps);
                put("when", when);
                put("retry", retry);
                put("timeoutSeconds", timeout);
                put("seconds", seconds);
                put("request", request);
                put("allowStatus", allow);
                put("value", value);
                put("workflowId", wf);
                put("variables", vars);
                if let Some((k, v)) = extra {
                    m.insert(k, v);
                }
                Value::Object(m)
            },
        )
        .boxed()
}

pub fn definition() -> BoxedStrategy<Value> {
    prop_oneof![
        8 => prop::collection::vec(step(), 0..8).prop_map(|s| json!({ "steps": s })),
        // Past the step limit, and many copies of one step.
        1 => (150usize..400).prop_map(|n| {
            let steps: Vec<Value> = (0..n)
                .map(|i| json!({"name": format!("s{i}"), "type": "transform", "value": i}))
                .collect();
            json!({ "steps": steps })
        }),
        // A long dependsOn chain pointing backwards: a cycle through every step.
        1 => (2usize..150).prop_map(|n| {
            let steps: Vec<Value> = (0..n)
                .map(|i| json!({"name": format!("s{i}"), "type": "transform", "value": 1,
                                "dependsOn": [format!("s{}", (i + 1) % n)]}))
                .collect();
            json!({ "steps": steps })
        }),
        1 => json_value().prop_map(|s| json!({ "steps": s })),
        1 => json_value(),
        1 => (prop::collection::vec(step(), 1..3), json_key(), json_value()).prop_map(|(s, k, v)| {
            let mut m = Map::new();
            m.insert("steps".into(), Value::Array(s));
            m.insert(k, v);
            Value::Object(m)
        }),
    ]
    .boxed()
}

pub fn workflow_body(existing_names: Vec<String>) -> BoxedStrategy<Value> {
    (
        opt(
            0.9,
            prop_oneof![
                6 => valid_name().prop_map(Value::String),
                2 => prop::sample::select(existing_names).prop_map(Value::String),
                2 => nasty_string().prop_map(Value::String),
                1 => json_value(),
            ],
        ),
        opt(
            0.5,
            prop_oneof![nasty_string().prop_map(Value::String), json_value()],
        ),
        opt(0.9, definition()),
        opt(
            0.3,
            prop_oneof![any::<bool>().prop_map(Value::Bool), json_value()],
        ),
        opt(0.2, (json_key(), json_value())),
    )
        .prop_map(|(name, desc, def, active, extra)| {
            let mut m = Map::new();
            if let Some(v) = name {
                m.insert("name".into(), v);
            }
            if let Some(v) = desc {
                m.insert("description".into(), v);
            }
            if let Some(v) = def {
                m.insert("definition".into(), v);
            }
            if let Some(v) = active {
                m.insert("isActive".into(), v);
            }
            if let Some((k, v)) = extra {
                m.insert(k, v);
            }
            Value::Object(m)
        })
        .boxed()
}

/// A workflow that passes every structural check, with hostile strings and values where
/// any string or value may stand: they reach the database.
pub fn near_valid_workflow() -> BoxedStrategy<Value> {
    let step = prop_oneof![
        (valid_name(), nasty_string()).prop_map(|(agent, instr)| json!({
            "type": "agent", "agentId": agent, "instructions": instr
        })),
        json_value().prop_map(|v| json!({ "type": "transform", "value": v })),
        (json_value(), json_value()).prop_map(|(h, b)| json!({
            "type": "http", "request": {"method": "POST", "url": "http://127.0.0.1:9/x", "body": b},
            "allowStatus": [404], "x": h
        })),
    ];
    (
        valid_name(),
        opt(0.6, nasty_string()),
        prop::collection::vec(step, 1..4),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(name, description, steps, active, with_name)| {
            let steps: Vec<Value> = steps
                .into_iter()
                .enumerate()
                .map(|(i, mut s)| {
                    let m = s.as_object_mut().expect("a step");
                    m.insert("name".into(), json!(format!("s{i}")));
                    // Only the http step carries a stray field; drop it most of the time.
                    if i > 0 || !active {
                        m.remove("x");
                    }
                    s
                })
                .collect();
            let mut m = Map::new();
            if with_name {
                m.insert("name".into(), json!(name));
            }
            if let Some(d) = description {
                m.insert("description".into(), json!(d));
            }
            m.insert("definition".into(), json!({ "steps": steps }));
            m.insert("isActive".into(), json!(active));
            Value::Object(m)
        })
        .boxed()
}

/// The JSON text of `v`, with every `HUGE` placeholder swapped for a huge number literal.
pub fn render(v: &Value, pick: usize) -> Vec<u8> {
    let text = serde_json::to_string(v).expect("serialize");
    let literal = HUGE_LITERALS[pick % HUGE_LITERALS.len()];
    text.replace(&format!("\"{HUGE}\""), literal).into_bytes()
}

/// Bodies of every kind, around `shaped` (valid-shaped bodies for the route at hand).
pub fn body(shaped: BoxedStrategy<Value>) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        10 => (shaped.clone(), any::<usize>()).prop_map(|(v, p)| render(&v, p)),
        // Truncated JSON.
        2 => (shaped.clone(), 0.0f64..1.0).prop_map(|(v, f)| {
            let b = render(&v, 0);
            let cut = ((b.len() as f64) * f) as usize;
            b[..cut.min(b.len().saturating_sub(1))].to_vec()
        }),
        // Invalid UTF-8 spliced into JSON (inside a string or between tokens).
        2 => (shaped.clone(), 0.0f64..1.0, prop::sample::select(vec![
                vec![0xffu8], vec![0xc3, 0x28], vec![0xed, 0xa0, 0x80], vec![0xf0, 0x9f], vec![0xc0, 0xaf], vec![0],
            ])).prop_map(|(v, f, junk)| {
            let mut b = render(&v, 0);
            let at = ((b.len() as f64) * f) as usize;
            let at = at.min(b.len());
            b.splice(at..at, junk);
            b
        }),
        1 => (0usize..2000, any::<u64>()).prop_map(|(n, seed)| {
            let mut r = Xorshift(seed | 1);
            (0..n).map(|_| r.next() as u8).collect()
        }),
        1 => Just(Vec::new()),
        1 => Just(b"   \n\t ".to_vec()),
        // Deep nesting.
        2 => (50usize..5000, 0u8..4).prop_map(|(d, kind)| match kind {
            0 => format!("{}{}", "[".repeat(d), "]".repeat(d)).into_bytes(),
            1 => format!("{}1{}", "{\"a\":".repeat(d), "}".repeat(d)).into_bytes(),
            2 => format!("{{\"definition\":{{\"steps\":{}{}}}}}", "[".repeat(d), "]".repeat(d)).into_bytes(),
            _ => format!("{{\"variables\":{}null{}}}", "{\"x\":".repeat(d), "}".repeat(d)).into_bytes(),
        }),
        // Nesting just under serde_json's recursion limit, inside fields that are stored.
        1 => (100usize..127, 0u8..3).prop_map(|(d, kind)| {
            let nested = format!("{}1{}", "[".repeat(d), "]".repeat(d));
            match kind {
                0 => format!("{{\"name\":\"deep\",\"definition\":{{\"steps\":[{{\"name\":\"a\",\"type\":\"transform\",\"value\":{nested}}}]}}}}"),
                1 => format!("{{\"variables\":{{\"a\":{nested}}}}}"),
                _ => format!("{{\"description\":{nested}}}"),
            }
            .into_bytes()
        }),
        // Wrong types at the top.
        2 => prop_oneof![
            Just(json!(null)), Just(json!([])), Just(json!([{}])), Just(json!("a string")),
            Just(json!(42)), Just(json!(true)), Just(json!(1.5)),
        ]
        .prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => prop::sample::select(vec![
            "1e400", "{\"a\":1e400}", "{\"variables\":{\"n\":1e400}}", "{\"isActive\":1e400}",
            "{\"a\":1}{\"b\":2}", "{\"a\":1,}", "{'a':1}", "{\"a\":NaN}", "{\"a\":Infinity}",
            "{\"a\":\"\\ud800\"}", "{\"a\":\"\\u0000\"}", "\u{feff}{}", "{\"a\":01}", "{\"a\" 1}",
            "{\"name\":\"x\",\"name\":\"y\"}", "{\"variables\":{},\"variables\":[]}",
            "{\"name\":\"wf\\u0000x\"}", "{\"description\":\"\\u0000\"}",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        // Random unknown keys.
        2 => prop::collection::btree_map(json_key(), json_value(), 1..10)
            .prop_map(|m| serde_json::to_vec(&m).unwrap()),
        // Large payloads: under, near and over the 1 MiB limit.
        // (Written as text: serializing half a megabyte is slow in a debug build.)
        1 => (100_000usize..500_000).prop_map(|n| {
            format!(
                "{{\"name\":\"big\",\"description\":\"{}\",\"variables\":{{\"blob\":\"{}\"}}}}",
                "d".repeat(n),
                "v".repeat(n)
            )
            .into_bytes()
        }),
        1 => (1_000usize..3_000).prop_map(|n| {
            let value = "v".repeat(100);
            let vars: Vec<String> = (0..n).map(|i| format!("\"k{i}\":\"{value}\"")).collect();
            format!("{{\"variables\":{{{}}}}}", vars.join(",")).into_bytes()
        }),
        1 => (1_048_000usize..1_100_000).prop_map(|n| {
            format!("{{\"description\":\"{}\"}}", "x".repeat(n)).into_bytes()
        }),
    ]
    .boxed()
}

pub fn content_type() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        12 => Just(Some("application/json".to_string())),
        1 => Just(None),
        1 => Just(Some("text/plain".to_string())),
        1 => Just(Some("application/json; charset=latin1".to_string())),
        1 => prop::sample::select(vec![
            "APPLICATION/JSON", "application/json;;;", "application/problem+json", "application/jsonx",
            "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "*/*", "",
            "application/", "+json", "application/json; charset=utf-8; q=0.1", ";",
        ])
        .prop_map(|s| Some(s.to_string())),
        1 => "[ -~]{0,40}".prop_map(Some),
    ]
    .boxed()
}

pub fn method() -> BoxedStrategy<String> {
    prop_oneof![
        4 => Just("GET"),
        5 => Just("POST"),
        3 => Just("PUT"),
        1 => Just("DELETE"),
        1 => Just("PATCH"),
        1 => Just("OPTIONS"),
        1 => Just("HEAD"),
    ]
    .prop_map(str::to_string)
    .boxed()
}

/// A method and path: mostly a method the route serves, sometimes any method.
pub fn routed(
    methods: &'static [&'static str],
    path: impl Strategy<Value = String> + 'static,
) -> BoxedStrategy<(String, String)> {
    (
        prop_oneof![
            3 => prop::sample::select(methods).prop_map(str::to_string),
            1 => method(),
        ],
        path,
    )
        .boxed()
}

pub fn header_value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => "[a-zA-Z0-9_.:-]{1,40}".prop_map(String::into_bytes),
        1 => Just(Vec::new()),
        1 => "[ -~]{0,60}".prop_map(String::into_bytes),
        1 => (200usize..600).prop_map(|n| "k".repeat(n).into_bytes()),
        1 => prop::collection::vec(0x80u8..=0xff, 1..20),
    ]
    .boxed()
}

/// Stands for the app's real org key in a generated Authorization value ([`authorize`]).
pub const KEY_PLACEHOLDER: &str = "Bearer @key@";

/// The Authorization header of a case: mostly the org's key; sometimes none, another
/// scheme, a key that does not exist, the admin key (not an org key), or garbage.
pub fn credential() -> BoxedStrategy<Option<Vec<u8>>> {
    prop_oneof![
        40 => Just(Some(KEY_PLACEHOLDER.as_bytes().to_vec())),
        1 => Just(None),
        1 => Just(Some(b"Bearer thy_notakeyatall".to_vec())),
        1 => Just(Some(format!("Bearer {}", crate::ADMIN_KEY).into_bytes())),
        1 => Just(Some(b"Basic dXNlcjpwYXNz".to_vec())),
        1 => header_value().prop_map(Some),
    ]
    .boxed()
}

/// `headers` with the generated Authorization value (if any) added.
pub fn with_credential(
    mut headers: Vec<(String, Vec<u8>)>,
    credential: Option<Vec<u8>>,
) -> Vec<(String, Vec<u8>)> {
    if let Some(v) = credential {
        headers.push(("authorization".to_string(), v));
    }
    headers
}

/// The case with the app's key in place of [`KEY_PLACEHOLDER`].
pub fn authorize(mut case: Case, key: &str) -> Case {
    for (_, v) in case.headers.iter_mut() {
        if v.as_slice() == KEY_PLACEHOLDER.as_bytes() {
            *v = format!("Bearer {key}").into_bytes();
        }
    }
    case
}

//! Hostile-request testing shared by both services' API tests: proptest strategies for
//! malformed and adversarial requests, the invariant every answer must keep (an envelope
//! with a contract error code, never a 5xx), and a harness that sends the cases from a child
//! process so a request that kills the service is reported with the request.
//!
//! Cases are drawn from a `TestRunner` with a fixed seed per case index, so every run sends
//! the same cases (`HOSTILE_SEED=<n>` explores others).
#![allow(clippy::type_complexity)]

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How many requests one run sends.
pub const CASES: usize = 3000;

pub const CODES: &[&str] = &[
    "INVALID_JSON",
    "VALIDATION_ERROR",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "NOT_FOUND",
    "CONFLICT",
    "METHOD_NOT_ALLOWED",
    "PAYLOAD_TOO_LARGE",
    "UNSUPPORTED_MEDIA_TYPE",
    "RATE_LIMITED",
    "QUOTA_EXCEEDED",
    "UNAVAILABLE",
    "INTERNAL",
];

/// A placeholder leaf that is swapped for a number literal serde_json cannot hold.
pub const HUGE: &str = "__HUGE_NUMBER__";
pub const HUGE_LITERALS: &[&str] = &[
    "1e400",
    "-1e400",
    "123456789012345678901234567890123456789",
    "1E999999999",
    "-0",
    "0.000000000000000000000000000000000000000000000001e-400",
];

#[derive(Debug, Clone)]
pub struct Case {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Case {
    pub fn describe(&self) -> String {
        let shown = &self.body[..self.body.len().min(300)];
        format!(
            "{} {} (path {} bytes)\n  content-type: {:?}\n  headers: {:?}\n  body ({} bytes), first 300: {:?}",
            self.method,
            truncate(&self.path, 600),
            self.path.len(),
            self.content_type,
            self.headers
                .iter()
                .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(&v[..v.len().min(80)])))
                .collect::<Vec<_>>(),
            self.body.len(),
            String::from_utf8_lossy(shown),
        )
    }
}

pub fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

// ---------------------------------------------------------------------------------------
// Strings, segments, queries
// ---------------------------------------------------------------------------------------

/// A string of `min..max` characters drawn from `alphabet`: a cheap stand-in for a regex
/// strategy, which is slow for long strings in a debug build.
pub fn chars(alphabet: &'static str, min: usize, max: usize) -> BoxedStrategy<String> {
    let alphabet: Vec<char> = alphabet.chars().collect();
    (min..max, any::<u64>())
        .prop_map(move |(n, seed)| {
            let mut x = seed | 1;
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                .collect()
        })
        .boxed()
}

pub const ALNUM: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
pub const LOWER: &str = "abcdefghijklmnopqrstuvwxyz";

pub fn valid_name() -> BoxedStrategy<String> {
    "[a-z][a-z0-9_-]{0,20}".boxed()
}

pub const TEMPLATES: &[&str] = &[
    "{{ x",
    "{{ variables.ticketId }}",
    "{% for %}",
    "{% for x in %}{% endfor %}",
    "{% if %}",
    "{% endif %}",
    "{{ }}",
    "{{ steps.classify.output.priority }}",
    "steps.classify.output.priority == 'high'",
    "{{ 1/0 }}",
    "{{ run.id ~ run.workflowId }}",
    "{{ variables['a'] | upper }}",
    "{% raw %}{{ x }}",
    "{# unterminated comment",
    "{{ undefined_name }}",
    "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    "{% set x = range(1000000000) %}",
    "}}{{",
    "==",
    "and or not",
    "true",
    "",
];

pub fn template_string() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::sample::select(TEMPLATES).prop_map(str::to_string),
        // Deeply nested expressions and blocks: the parser must refuse, not overflow.
        1 => (50usize..5000).prop_map(|d| format!("{{{{ {}1{} }}}}", "(".repeat(d), ")".repeat(d))),
        1 => (50usize..3000).prop_map(|d| format!("{}x{}", "{% if true %}".repeat(d), "{% endif %}".repeat(d))),
        1 => (50usize..3000).prop_map(|d| format!("{{{{ {}1 }}}}", "-".repeat(d))),
        1 => (50usize..3000).prop_map(|d| format!("{{{{ {}1{} }}}}", "[".repeat(d), "]".repeat(d))),
        // Long chains of prefix operators, filters, attributes and binary operators, up to
        // the 64 KiB template limit.
        1 => (100usize..32_000, 0u8..5).prop_map(|(d, kind)| match kind {
            0 => format!("{{{{ a{} }}}}", ".b".repeat(d)),
            1 => format!("{{{{ 1{} }}}}", "|abs".repeat(d / 2)),
            2 => format!("{{{{ {}1 }}}}", "not ".repeat(d / 2)),
            3 => format!("{{{{ 1{} }}}}", "~1".repeat(d)),
            _ => format!("{{{{ {}1 }}}}", "-".repeat(d)),
        }),
        1 => (10_000usize..200_000).prop_map(|n| format!("{{{{ variables.a }}}}{}", "lorem ipsum ".repeat(n / 12))),
    ]
    .boxed()
}

/// Strings meant to hurt: empty, unicode, NULs, control characters, very long, templates.
pub fn nasty_string() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[a-z_]{0,12}",
        2 => any::<String>(),
        1 => Just("\u{0}".to_string()),
        1 => "[a-z]{1,5}\u{0}[a-z]{1,5}",
        1 => Just("a b c".to_string()),
        1 => Just("Ünïcødé_名前_🚀".to_string()),
        1 => Just("\u{feff}\u{202e}rtl\u{200b}".to_string()),
        1 => Just("\u{d7ff}\u{e000}\u{fffd}\u{10ffff}".to_string()),
        1 => chars(LOWER, 65, 300),
        1 => (1000usize..5000).prop_map(|n| "x".repeat(n)),
        2 => template_string(),
    ]
    .boxed()
}

pub fn json_key() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "name", "description", "definition", "isActive", "steps", "type", "agentId",
            "instructions", "dependsOn", "variables", "workflowId", "orgId", "approved",
            "comment", "version", "id", "__proto__", "constructor", "",
        ])
        .prop_map(str::to_string),
        2 => chars("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", 1, 11),
        1 => chars("ab\u{0}\u{1f}é名🚀\u{fffd} .[]", 0, 12),
    ]
    .boxed()
}

pub fn number_value() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => (-5i64..100).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        1 => prop::sample::select(vec![
            0.5, -0.0, 1e308, -1e308, 1e-308, 4294967296.0, 2147483648.0, 9.3e18, 3600.0001,
            2592000.5, 1e15,
        ])
        .prop_map(|f| json!(f)),
        1 => Just(Value::String(HUGE.into())),
        1 => Just(json!("3")),
        1 => Just(Value::Null),
        1 => Just(json!(true)),
    ]
    .boxed()
}

/// Random JSON up to depth 3, built from one seed: proptest's `prop_recursive` rebuilds its
/// strategy on every draw, too slow for thousands of cases in a debug build.
pub fn json_value() -> BoxedStrategy<Value> {
    any::<u64>()
        .prop_map(|seed| Xorshift(seed | 1).json(3))
        .boxed()
}

pub struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }

    fn string(&mut self) -> String {
        match self.below(4) {
            0 => self.pick(LEAF_STRINGS).to_string(),
            1 => {
                let n = self.below(40);
                (0..n)
                    .map(|_| NASTY_CHARS[self.below(NASTY_CHARS.len())])
                    .collect()
            }
            _ => {
                let n = self.below(12);
                (0..n)
                    .map(|_| (b'a' + self.below(26) as u8) as char)
                    .collect()
            }
        }
    }

    fn number(&mut self) -> Value {
        match self.below(6) {
            0 => json!(self.next() as i64),
            1 => json!(self.next()),
            2 => json!(f64::from_bits(self.next()))
                .as_f64()
                .map_or(json!(0.5), |f| json!(f)),
            3 => json!([0.5, -0.0, 1e308, -1e308, 1e-308, 4294967296.0, 9.3e18][self.below(7)]),
            4 => Value::String(HUGE.into()),
            _ => json!(self.below(105) as i64 - 5),
        }
    }

    fn json(&mut self, depth: u32) -> Value {
        let leaf = depth == 0 || self.below(3) == 0;
        if leaf {
            return match self.below(8) {
                0 => Value::Null,
                1 => Value::Bool(self.below(2) == 0),
                2 | 3 => self.number(),
                _ => Value::String(self.string()),
            };
        }
        let n = self.below(5);
        if self.below(2) == 0 {
            Value::Array((0..n).map(|_| self.json(depth - 1)).collect())
        } else {
            Value::Object(
                (0..n)
                    .map(|_| {
                        let k = if self.below(2) == 0 {
                            self.pick(KEYS).to_string()
                        } else {
                            self.string()
                        };
                        (k, self.json(depth - 1))
                    })
                    .collect(),
            )
        }
    }
}

pub const LEAF_STRINGS: &[&str] = &[
    "",
    "\u{0}",
    "a\u{0}b",
    "a b c",
    "Ünïcødé_名前_🚀",
    "\u{feff}\u{202e}rtl\u{200b}",
    "\u{fffd}\u{10ffff}",
    "{{ x",
    "{% for %}",
    "}}{{",
    "{{ variables.a }}",
    "\\",
    "\"",
    "\n\r\t",
    "null",
    "true",
    "0",
    "-1",
    "1e400",
    "wf_seed_a",
    "classify",
    "💥💥💥",
    "steps.classify.output.priority == 'high'",
    "agent",
    "transform",
    "approval",
];
pub const NASTY_CHARS: &[char] = &[
    'a', 'b', '\u{0}', '\u{1f}', '\u{7f}', 'é', '名', '🚀', '\u{fffd}', '\u{200b}', ' ', '{', '}',
    '%', '"', '\\', '/', '\n',
];
pub const KEYS: &[&str] = &[
    "name",
    "description",
    "definition",
    "isActive",
    "steps",
    "type",
    "agentId",
    "instructions",
    "dependsOn",
    "variables",
    "workflowId",
    "orgId",
    "approved",
    "comment",
    "version",
    "id",
    "__proto__",
    "",
];

/// Encode every byte outside the unreserved set.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub const PERCENT_JUNK: &[&str] = &[
    "%00",
    "%ff",
    "%FF",
    "%2e%2e",
    "%2E%2e%2F",
    "%2f",
    "%",
    "%z",
    "%zz",
    "%c3%28",
    "%e2%82",
    "%f0%9f%98",
    "%ed%a0%80",
    "%u0041",
    "%%",
    "%25",
    "%0a",
    "%0d%0a",
    "%20",
    "%3f",
    "%23",
    "%c0%af",
    "..",
    ".",
    "%5c",
];

/// A path segment: an id, or junk.
pub fn segment(existing: Vec<String>) -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(existing),
        3 => valid_name().prop_map(|n| format!("wf_{n}")),
        1 => "run_[0-9a-z]{26}",
        1 => "[a-zA-Z0-9_]{1,12}",
        1 => chars(ALNUM, 1000, 5001),
        1 => (1usize..300).prop_map(|n| format!("wf_{}", "a".repeat(n))),
        2 => prop::collection::vec(
            prop_oneof![
                prop::sample::select(PERCENT_JUNK).prop_map(str::to_string),
                "[a-z_]{0,4}",
            ],
            1..6,
        )
        .prop_map(|v| v.concat()),
        1 => any::<String>().prop_map(|s| percent_encode(&s)),
        1 => any::<String>().prop_map(|s| s.replace(['/', '?', '#', '\\', '%'], "")),
        1 => Just(String::new()),
        1 => Just("runs".to_string()),
        1 => Just("validate".to_string()),
    ]
    .boxed()
}

pub fn query_string() -> BoxedStrategy<String> {
    let key = prop_oneof![
        4 => prop::sample::select(vec![
            "limit", "cursor", "isActive", "status", "workflowId", "orgId", "LIMIT", "foo", "",
            "limit[]", "%6cimit",
        ])
        .prop_map(str::to_string),
        1 => "[a-zA-Z%]{0,10}",
        1 => any::<String>().prop_map(|s| percent_encode(&s)),
    ];
    let value = prop_oneof![
        4 => prop::sample::select(vec![
            "-1", "0", "1", "50", "200", "201", "1e9", "99999999999999999999", "-9223372036854775808",
            "abc", "true", "false", "TRUE", "1", "yes", "RUNNING", "running", "PENDING", "%00", "%ff",
            "%zz", "%", "+", "wf_x", "", "null", "[]", "{}", "eyJ4Ijoi", "AAAA", "%F0%9F%98",
            "wf_seed_a", "wf_seed_a%00", "org_test", "org_other",
        ])
        .prop_map(str::to_string),
        1 => "[ -~]{0,30}",
        1 => "[A-Za-z0-9_-]{1,60}",
        1 => any::<String>().prop_map(|s| percent_encode(&s)),
        1 => chars(LOWER, 1000, 3001),
    ];
    prop_oneof![
        3 => prop::collection::vec((key, prop::option::weighted(0.9, value)), 1..5).prop_map(|pairs| {
            pairs
                .into_iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={v}"),
                    None => k,
                })
                .collect::<Vec<_>>()
                .join("&")
        }),
        1 => prop::sample::select(vec![
            "&&&", "=", "==", "limit", "limit=1&limit=2", "limit=10&cursor=x&cursor=y", "%",
            "a=%ff%fe", "a=1;b=2", "?", "limit=%31%30", "isActive=maybe", "status=COMPLETED&status=x",
        ])
        .prop_map(str::to_string),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------

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
        1 => Just(Some(format!("Bearer {}", crate::testing::ADMIN_KEY).into_bytes())),
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

// ---------------------------------------------------------------------------------------
// Sending and checking
// ---------------------------------------------------------------------------------------

/// The envelope rules every answer must keep; `Err` says which was broken.
pub fn check(method: &str, status: u16, text: &str) -> Result<(), String> {
    if status >= 500 {
        return Err(format!("status {status} is a 5xx"));
    }
    if method == "HEAD" {
        return Ok(());
    }
    let body: Value =
        serde_json::from_str(text).map_err(|e| format!("the body is not JSON ({e})"))?;
    let success = body["success"]
        .as_bool()
        .ok_or("the body has no boolean `success`")?;
    if (400..500).contains(&status) && success {
        return Err(format!("a {status} answer says success: true"));
    }
    if (200..300).contains(&status) && !success {
        return Err(format!("a {status} answer says success: false"));
    }
    if !success {
        let code = body["error"]["code"]
            .as_str()
            .ok_or("a failure without a string error.code")?;
        if !CODES.contains(&code) {
            return Err(format!(
                "error.code {code:?} is not one of the contract's codes"
            ));
        }
        if !body["error"]["message"].is_string() {
            return Err("a failure without a string error.message".into());
        }
    }
    Ok(())
}

pub enum Outcome {
    /// The client could not even build the request (a URL or header it refuses).
    Skipped,
    /// An answer that keeps the contract.
    Answered(u16),
    /// An answer (or none) that breaks it, with the status if there was one.
    Broken(Option<u16>, String),
}

pub async fn send(client: &reqwest::Client, address: &str, case: &Case) -> Outcome {
    let Ok(url) = reqwest::Url::parse(&format!("{address}{}", case.path)) else {
        return Outcome::Skipped;
    };
    let Ok(method) = reqwest::Method::from_bytes(case.method.as_bytes()) else {
        return Outcome::Skipped;
    };
    let mut req = client.request(method, url);
    if let Some(ct) = &case.content_type {
        match reqwest::header::HeaderValue::from_str(ct) {
            Ok(v) => req = req.header(reqwest::header::CONTENT_TYPE, v),
            Err(_) => return Outcome::Skipped,
        }
    }
    for (k, v) in &case.headers {
        if let Ok(v) = reqwest::header::HeaderValue::from_bytes(v) {
            req = req.header(k.as_str(), v);
        }
    }
    if !case.body.is_empty() || case.method != "GET" {
        req = req.body(case.body.clone());
    }
    let res = match req.send().await {
        Ok(res) => res,
        Err(e) => {
            return Outcome::Broken(
                None,
                format!(
                    "{}\n  => no answer: {e:?}\n  (the body, up to 4 KB: {:?})",
                    case.describe(),
                    String::from_utf8_lossy(&case.body[..case.body.len().min(4096)]),
                ),
            )
        }
    };
    let status = res.status().as_u16();
    let headers = format!("{:?}", res.headers());
    let text = match res.bytes().await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            return Outcome::Broken(
                Some(status),
                format!(
                    "{}\n  => {status}, the body could not be read: {e:?}",
                    case.describe()
                ),
            )
        }
    };
    match check(&case.method, status, &text) {
        Ok(()) => Outcome::Answered(status),
        Err(why) => Outcome::Broken(
            Some(status),
            format!(
                "{}\n  => {status} {headers}\n  => body: {}\n  broken: {why}",
                case.describe(),
                truncate(&text, 1000),
            ),
        ),
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// The runner for case `i`: a fixed seed per case, so the same cases come on every run and
/// case `i` can be made again without making those before it. `HOSTILE_SEED=<n>` picks
/// other cases, to explore beyond those the suite always sends.
pub fn runner(i: usize) -> TestRunner {
    let base = std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    seed[8..16].copy_from_slice(&base.to_le_bytes());
    seed[16..].copy_from_slice(b"thygon-hostile-i");
    TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
    )
}

pub fn case(cases: &BoxedStrategy<Case>, i: usize) -> Case {
    cases
        .new_tree(&mut runner(i))
        .expect("generate a case")
        .current()
}

/// The child's side: send cases `from..CASES` to `address`, printing one protocol line per
/// case on stdout (line-buffered, so a crash of the process loses nothing already sent):
/// `HOSTILE-CASE i` before it goes, then `HOSTILE-STATUS s`, `HOSTILE-SKIPPED` or
/// `HOSTILE-FAILED s|-` followed by the description.
/// `prepare` puts what only the child knows into a case (ids the seeding made).
pub async fn run_cases<F, Fut>(
    cases: &BoxedStrategy<Case>,
    address: &str,
    mut between: F,
    prepare: impl Fn(Case) -> Case,
) where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let from: usize = std::env::var("HOSTILE_FROM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let client = client();
    // The test harness has printed `test ... ` without a line end: start a line of our own.
    println!();
    for i in from..CASES {
        between(i).await;
        let case = prepare(case(cases, i));
        println!("HOSTILE-CASE {i}");
        match send(&client, address, &case).await {
            Outcome::Skipped => println!("HOSTILE-SKIPPED"),
            Outcome::Answered(status) => println!("HOSTILE-STATUS {status}"),
            Outcome::Broken(status, why) => println!(
                "HOSTILE-FAILED {}\n----- invariant failure (case #{i})\n{why}\n-----",
                status.map_or("-".to_string(), |s| s.to_string())
            ),
        }
    }
    println!("HOSTILE-DONE");
}

/// The parent's side: run the cases in a child process (this test binary running
/// `child_test`), so that a request that kills the service (a stack overflow aborts the
/// whole process) is reported with the request, and the cases after it still run in a new
/// child. Prints the figures and fails on any broken invariant or crash.
pub fn supervise(service: &str, child_test: &str, cases: &BoxedStrategy<Case>) {
    const MAX_CRASHES: usize = 8;
    let started = Instant::now();
    let mut from = 0;
    let (mut sent, mut skipped) = (0usize, 0usize);
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut crashes: Vec<String> = Vec::new();
    loop {
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([child_test, "--exact", "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env("HOSTILE_FROM", from.to_string())
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("run the child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut last_case = None;
        let mut done = false;
        let mut in_failure = false;
        let mut failure = String::new();
        for line in stdout.lines() {
            if let Some(i) = line.strip_prefix("HOSTILE-CASE ") {
                last_case = i.parse::<usize>().ok();
                sent += 1;
            } else if let Some(s) = line.strip_prefix("HOSTILE-STATUS ") {
                *by_status.entry(s.parse().unwrap_or(0)).or_default() += 1;
            } else if line == "HOSTILE-SKIPPED" {
                skipped += 1;
                sent -= 1;
            } else if let Some(s) = line.strip_prefix("HOSTILE-FAILED ") {
                if let Ok(s) = s.parse::<u16>() {
                    *by_status.entry(s).or_default() += 1;
                }
                in_failure = true;
            } else if line == "HOSTILE-DONE" {
                done = true;
            } else if in_failure {
                if line == "-----" {
                    failures.push(std::mem::take(&mut failure));
                    in_failure = false;
                } else {
                    failure.push_str(line);
                    failure.push('\n');
                }
            }
        }
        if done {
            break;
        }
        // The child died before the end: the service crashed on the case it was sending.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .rev()
            .take(6)
            .collect();
        let Some(i) = last_case else {
            panic!(
                "the {service} child stopped before sending anything ({}):\n{stderr}\n{stdout}",
                out.status
            );
        };
        let c = case(cases, i);
        crashes.push(format!(
            "case #{i}: the process died ({}) while the service handled\n{}\n  (the body, up to 4 KB: {:?})\n  last stderr lines: {:?}",
            out.status,
            c.describe(),
            String::from_utf8_lossy(&c.body[..c.body.len().min(4096)]),
            tail.into_iter().rev().collect::<Vec<_>>(),
        ));
        from = i + 1;
        if crashes.len() >= MAX_CRASHES || from >= CASES {
            break;
        }
    }
    let fivexx: usize = by_status
        .iter()
        .filter(|(s, _)| **s >= 500)
        .map(|(_, n)| n)
        .sum();
    let statuses = by_status
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "hostile requests ({service}): {sent} sent, {fivexx} 5xx, {} invariant failures, {} crashes of the service, {skipped} skipped (the client could not build them), by status {{{statuses}}} in {:.1?}",
        failures.len(),
        crashes.len(),
        started.elapsed(),
    );
    for f in failures.iter().take(25) {
        println!("----- invariant failure ({service})\n{f}");
    }
    for c in &crashes {
        println!("----- crash ({service})\n{c}");
    }
    assert!(
        failures.is_empty() && crashes.is_empty(),
        "{} hostile requests to {service} broke the envelope contract and {} crashed the service (printed above)",
        failures.len(),
        crashes.len()
    );
}

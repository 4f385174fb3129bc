//! Strings, path segments and query strings.

use super::*;
use proptest::prelude::*;
use serde_json::{json, Value};

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

pub struct Xorshift(pub(super) u64);

impl Xorshift {
    pub(super) fn next(&mut self) -> u64 {
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

//! The fast reader against serde_yaml_ng: wherever it answers, it must give
//! the value serde_yaml_ng gives (`serde_json::Value::deserialize` of each
//! document); where it is unsure it must say so.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::{documents, resolve, Plain};

/// serde_yaml_ng's reading of `text`, one value per document.
fn slow(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        out.push(Value::deserialize(document).map_err(|e| e.to_string())?);
    }
    // serde_yaml_ng reads an empty stream as one empty document.
    if out == [Value::Null] && documents(text).is_some_and(|d| d.iter().next().is_none()) {
        out.clear();
    }
    Ok(out)
}

/// The fast reading of `text`, parsed back; `None` when it gave up.
fn fast(text: &str) -> Option<Vec<Value>> {
    documents(text).map(|docs| {
        docs.iter()
            .map(|json: &str| serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}")))
            .collect()
    })
}

/// Both readers agree on `text`, or the fast one gave up; true when it answered.
fn agrees(text: &str) -> bool {
    match fast(text) {
        Some(values) => {
            assert_eq!(
                Ok(values),
                slow(text),
                "fast and slow readers differ on {text:?}"
            );
            true
        }
        None => false,
    }
}

const SCALARS: &[&str] = &[
    "",
    "~",
    "null",
    "Null",
    "NULL",
    "nULL",
    "true",
    "True",
    "TRUE",
    "tRue",
    "false",
    "yes",
    "no",
    "on",
    "off",
    "y",
    "n",
    "0",
    "-0",
    "+0",
    "00",
    "007",
    "-007",
    "+007",
    "12",
    "+12",
    "-12",
    "++12",
    "+-12",
    "--12",
    "1_000",
    "0x1F",
    "0X1F",
    "0x",
    "0x+1",
    "0x-1",
    "-0x1F",
    "-0x-1",
    "+0x1F",
    "0o17",
    "0o8",
    "-0o17",
    "0b101",
    "-0b101",
    "0b2",
    "0b",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "340282366920938463463374607431768211456",
    "1.5",
    "-1.5",
    "+1.5",
    "1.",
    ".5",
    "-.5",
    "1e3",
    "1E3",
    "1e400",
    "-1e400",
    ".inf",
    "-.inf",
    "+.inf",
    ".Inf",
    ".INF",
    ".NaN",
    ".nan",
    "+.nan",
    "-.nan",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "infinity",
    "Infinity",
    "10.0.0.1",
    "10.0.0.0/8",
    "::1",
    "1.2.3",
    "v1",
    "-",
    "+",
    ".",
    "..",
    "-a",
    "+a",
    ".a",
    "80/TCP",
    "0.0.0.0",
    "1:2",
    "12:30:00",
    "2026-12-07",
    "1e",
    "0x1.8p3",
    "3 apples",
    "١٢",
    "１２",
    "/r0/",
    "a\"b",
    "a\\b",
    "é",
    "bench.local",
    "*.example.com",
];

#[test]
fn plain_scalars_read_as_serde_yaml_ng_reads_them() {
    let mut answered = 0;
    for s in SCALARS {
        // A plain scalar cannot start with some indicators; those cases are
        // covered quoted below.
        for text in [format!("k: {s}\n"), format!("- {s}\n"), format!("[{s}]\n")] {
            if serde_yaml_ng::from_str::<Value>(&text).is_ok() && agrees(&text) {
                answered += 1;
            }
        }
    }
    // Most of the list is read by the fast path (floats and big numbers are not).
    assert!(answered > 2 * SCALARS.len(), "only {answered} answered");
}

#[test]
fn quoted_and_block_scalars_are_strings() {
    for s in SCALARS {
        let quoted = serde_json::to_string(s).unwrap();
        assert!(agrees(&format!("k: {quoted}\n")), "{quoted}");
        assert!(agrees(&format!("k: '{}'\n", s.replace('\'', "''"))), "{s}");
        assert!(agrees(&format!("k: |\n  {s}\n  next\n")), "{s}");
        assert!(agrees(&format!("k: >\n  {s}\n  next\n")), "{s}");
    }
    assert!(agrees("k: \"tab\\there \\u0001 \\\" \\\\ \\n\"\n"));
    assert!(agrees("k: \"\\u00e9\\U0001F600\"\n"));
}

#[test]
fn keys_are_strings_or_left_to_serde_yaml_ng() {
    for s in SCALARS {
        let text = format!("{s}: 1\n");
        if serde_yaml_ng::from_str::<Value>(&text).is_ok() {
            agrees(&text);
        }
        let quoted = serde_json::to_string(s).unwrap();
        assert!(agrees(&format!("{quoted}: 1\n")), "{quoted}");
    }
    assert!(agrees("name: a\nlabels: {app: x, tier: web}\n"));
    // A number, a boolean or null as a key: serde_yaml_ng decides.
    assert_eq!(fast("80: http\n"), None);
    assert_eq!(fast("true: 1\n"), None);
    assert_eq!(fast("? [a, b]\n: 1\n"), None);
}

#[test]
fn what_the_fast_reader_leaves_to_serde_yaml_ng() {
    for text in [
        "a: &x 1\nb: *x\n",    // anchors and aliases
        "a: !!str 1\n",        // tags
        "a: !custom {b: 1}\n", // tags on collections
        "a: 1.5\n",            // floats
        "a: 18446744073709551616\n",
        "a: [1, 2\n", // syntax errors
        "a: b\n  c: d\n",
    ] {
        assert_eq!(fast(text), None, "{text:?}");
    }
}

#[test]
fn documents_and_structure() {
    for text in [
        "",
        "# only a comment\n",
        "---\n",
        "---\n---\n",
        "a: 1\n---\nb: 2\n",
        "---\na: 1\n...\n---\nb: [1, {c: d}, [], {}]\n",
        "a:\n  - b: 1\n    c: [x, y]\n  - {d: e}\nf: {}\ng: []\nh:\n",
        "a: 1\r\nb: two\r\n",
        "- 1\n- - 2\n  - 3\n- k: v\n",
        "plain text\n",
        "a: b\na: c\n", // a repeated key: the last one wins in both
        "a: very long plain scalar\n  folded over two lines\n",
    ] {
        assert!(agrees(text), "{text:?}");
    }
}

#[test]
fn every_example_manifest_reads_the_same() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["docs/examples", "docs/examples/invalid"] {
        if let Ok(found) = crate::examples::read_dir(&root.join(dir)) {
            files.extend(found);
        }
    }
    assert!(
        files.len() >= 10,
        "found only {} example files",
        files.len()
    );
    let answered = files
        .iter()
        .filter(|(name, text)| {
            if slow(text).is_err() {
                assert_eq!(fast(text), None, "{name}");
                return false;
            }
            agrees(text)
        })
        .count();
    assert!(
        answered * 10 >= files.len() * 9,
        "fast path read only {answered} of {}",
        files.len()
    );
}

#[test]
fn resolution_table() {
    assert_eq!(resolve("80"), Plain::Int(80));
    assert_eq!(resolve("-0x10"), Plain::Int(-16));
    assert_eq!(resolve("0o17"), Plain::Int(15));
    assert_eq!(resolve("007"), Plain::Str);
    assert_eq!(resolve("1.5"), Plain::Unsure);
    assert_eq!(resolve("10.0.0.1"), Plain::Str);
    assert_eq!(resolve("~"), Plain::Null);
    assert_eq!(resolve("False"), Plain::Bool(false));
    assert_eq!(resolve("yes"), Plain::Str);
}

/// How many random texts to try (`YAML_RANDOM_TEXTS`, default 20,000), and a
/// seeded xorshift generator of numbers below its argument (`YAML_RANDOM_SEED`
/// or `default_seed`): repeatable runs, more or others on demand.
pub(super) fn random_texts(default_seed: u64) -> (usize, impl FnMut(usize) -> usize) {
    let count: usize = std::env::var("YAML_RANDOM_TEXTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let mut seed: u64 = std::env::var("YAML_RANDOM_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default_seed)
        .max(1);
    let next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    (count, next)
}

/// Random YAML-like texts from pieces that matter to the reader (indentation,
/// indicators, quotes, the scalars above): wherever the fast reader answers,
/// serde_yaml_ng must read the text and agree. A fixed seed keeps it repeatable;
/// `YAML_RANDOM_TEXTS` (default 20,000) and `YAML_RANDOM_SEED` run more or others.
#[test]
fn random_texts_read_the_same() {
    const PIECES: &[&str] = &[
        "\n",
        "\n  ",
        "\n    ",
        "- ",
        ": ",
        ":",
        "{",
        "}",
        "[",
        "]",
        ", ",
        "---\n",
        "...\n",
        "#c",
        "\"",
        "'",
        "|\n  ",
        ">-\n  ",
        "? ",
        "&a ",
        "*a",
        "!!str ",
        "\\",
        "\t",
        " ",
        "k",
        "key",
        "\"q\\u0041\\n\"",
        "'it''s'",
    ];
    let (count, mut next) = random_texts(0x9e37_79b9_7f4a_7c15);
    let (mut answered, mut total) = (0, 0);
    for _ in 0..count {
        let mut text = String::new();
        for _ in 0..1 + next(24) {
            if next(3) == 0 {
                text.push_str(SCALARS[next(SCALARS.len())]);
            } else {
                text.push_str(PIECES[next(PIECES.len())]);
            }
        }
        total += 1;
        if let Some(values) = fast(&text) {
            answered += 1;
            let slow = slow(&text).unwrap_or_else(|e| panic!("{text:?}: fast read it, slow: {e}"));
            assert_eq!(values, slow, "the readers differ on {text:?}");
        }
    }
    eprintln!("the fast reader answered {answered} of {total} random texts");
    // Enough of them are valid YAML the fast reader takes for the test to mean something.
    assert!(
        answered * 5 > total,
        "fast reader answered {answered} of {total}"
    );
}

//! The subset reader against libyaml, event by event: wherever it answers,
//! libyaml must read the text too and give the same events.

use super::super::{Event, Events};
use super::read;

fn ours(text: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    read(text, &mut |event| {
        out.push(format!("{event:?}"));
        Some(())
    })
    .map(|()| out)
}

fn libyaml(text: &str) -> Option<Vec<String>> {
    let mut events = Events::new(text)?;
    let mut out = Vec::new();
    loop {
        let event = events.next()?;
        let end = matches!(event, Event::StreamEnd);
        out.push(format!("{event:?}"));
        if end {
            return Some(out);
        }
    }
}

/// Ours answers on `text` and libyaml gives the same events.
fn same(text: &str) {
    let ours = ours(text).unwrap_or_else(|| panic!("the subset reader gave up on {text:?}"));
    assert_eq!(Some(ours), libyaml(text), "events differ on {text:?}");
}

#[test]
fn manifests_as_people_write_them() {
    for text in [
        "",
        "# only a comment\n",
        "---\n",
        "---\n---\n",
        "--- # a comment\n",
        "a: 1\n---\nb: 2\n",
        "a: 1\n---\n",
        "apiVersion: meshgate.io/v1alpha1\nkind: ApiGateway\nmetadata:\n  name: web\n  namespace: demo\n",
        "spec:\n  listeners:\n  - name: https\n    port: 8443\n    protocol: HTTPS\n  routes:\n  - name: r\n",
        "spec:\n  routes:\n    - name: a\n      matches:\n        - path: {type: PathPrefix, value: /a/}\n",
        "routes:\n- name: r0\n  matches: [{path: {type: PathPrefix, value: /r0/}}]\n  backendRefs: [{name: upstream, port: 80}]\n",
        "metadata: {name: upstream-1, namespace: bench, labels: {kubernetes.io/service-name: upstream}}\n",
        "endpoints: [{addresses: [\"127.0.0.1\"], conditions: {ready: true}}]\n",
        "a:\n  - b: 1\n    c: [x, y]\n  - {d: e}\nf: {}\ng: []\nh:\n",
        "- 1\n- - 2\n  - 3\n- k: v\n",
        "- a:\n  - x\n  b: 1\n",
        "-\n- x\n-\n  y: z\n",
        "- # comment\n  a: 1\n",
        "plain text\n",
        "a: b\na: c\n",
        "a: http://x:8080/p?q=1#frag\nb: c:\\\\d\n",
        "a: b # comment\nc: 'd' # comment\n# between\n   # indented comment\ne: \"f\"\n",
        "key  : value\n\"quoted key\": 1\n'single': [a, 'b', \"c\"]\n",
        "a: 'it''s'\nb: \"q\\u0041\\n\\t\\\\\\\"\\/\\x41\"\nc: ''\nd: \"\"\n",
        "a: -1\nb: -x\nc: x-y\nd: ---\ne: a,b\nf: b[c]{d}\ng: \"x\" \n",
        "a:\n  value on its own line\nb: 2\n",
        "a:\n\n\n  b: 1\n\n",
        "  a: 1\n  b: 2\n",
        "a: ~\nb: null\nc: true\nd: 0x1f\ne: 007\n",
        "x: {a: b, c: [1, 2, {d: e}], f: \"g\"}\n",
        "[1, [2, 3], {a: b}]\n",
        "{a: b}\n",
        "\"just a string\"\n",
        "a: ünïcødé 🙂\n",
        "a: 1",
        "a:",
        "- ",
    ] {
        same(text);
    }
    // Long keys, up to where libyaml stops looking for their `:`.
    same(&format!("{}: v\n", "k".repeat(990)));
    same(&format!("{{{}: v}}\n", "k".repeat(990)));
    assert_eq!(ours(&format!("{}: v\n", "k".repeat(1010))), None);
}

#[test]
fn what_the_subset_leaves_to_libyaml() {
    for text in [
        "a: 1\r\n",         // CR
        "a:\t1\n",          // tab
        "a: |\n  text\n",   // block scalars
        "a: >-\n  text\n",  //
        "a: &x 1\nb: *x\n", // anchors and aliases
        "a: !!str 1\n",     // tags
        "? a\n: b\n",       // explicit keys
        "a: b\n  c\n",      // multi-line plain scalars
        "a: \"b\n  c\"\n",  // multi-line quoted scalars
        "a: [1,\n  2]\n",   // multi-line flow collections
        "a: [1, 2, ]\n",    // trailing comma
        "a: {b}\n",         // a flow key without value
        "a: {b: }\n",       // an empty flow value
        "{\"a\":1}\n",      // JSON-style `:` right after a key
        "a: \"\\e\"\n",     // a rarer escape
        "a: \"x\"#c\n",     // a comment right after a token
        "%YAML 1.2\n---\na: 1\n",
        "a: 1\n...\n",
        "--- a\n",
        "a: b: c\n", // what libyaml rejects
        "a: - b\n",
        "- a\nb: c\n",
        "a:\n    b: 1\n  c: 2\n",
        "[a: b]\n",
        "a: [b]: c\n",
    ] {
        assert_eq!(ours(text), None, "{text:?}");
    }
    // Deep nesting is left to libyaml too.
    let deep = format!("{}{}\n", "[".repeat(100), "]".repeat(100));
    assert_eq!(ours(&deep), None);
}

#[test]
fn the_benchmark_manifest_is_in_the_subset() {
    let mut text = String::from(
        "apiVersion: meshgate.io/v1alpha1\nkind: ApiGateway\nmetadata: {name: bench, namespace: bench}\nspec:\n  routes:\n",
    );
    for i in 0..500 {
        text.push_str(&format!(
            "  - name: r{i}\n    matches: [{{path: {{type: PathPrefix, value: /r{i}/}}}}]\n    backendRefs: [{{name: upstream, port: 80}}]\n"
        ));
    }
    same(&text);
}

/// Random texts, line by line: an indentation, a block indicator or key, a
/// value, sometimes a comment, now and then a piece that breaks the subset.
/// Wherever ours answers, libyaml must read the same events. Fixed seed; more
/// with `YAML_RANDOM_TEXTS` and `YAML_RANDOM_SEED` (as the reader tests above).
#[test]
fn random_texts_give_libyamls_events() {
    const HEADS: &[&str] = &[
        "- ", "- ", "-", "k: ", "key: ", "k:", "- k: ", "- - ", "\"q\": ", "'k': ", "--- ", "---",
        "...", "",
    ];
    const VALUES: &[&str] = &[
        "",
        "",
        "v",
        "1",
        "-1",
        "~",
        "a b",
        "http://h:1/p",
        "a:b",
        "é",
        "\"\\u00e9\\x41\\/\"",
        "'it''s'",
        "[a, b]",
        "[]",
        "{}",
        "{a: b, c: [d]}",
        "[{k: v}, 2]",
        "x #c",
        "[a, {b: c}]",
        "k: v",
        "- v",
        "{a}",
        "[a: b]",
        "'x' y",
        "|",
        "&a v",
        "*a",
        "? x",
        "\t",
        "v:",
        "a: b: c",
        "#c",
        " #c",
        "[a,",
        "\"x\"#c",
        "{a: }",
        "[a, ]",
    ];
    let (count, mut next) = super::super::tests::random_texts(0x2545_f491_4f6c_dd1d);
    let (mut answered, mut structured, mut libyaml_read) = (0, 0, 0);
    for _ in 0..count {
        let mut text = String::new();
        let mut indent: usize = 0;
        for _ in 0..1 + next(8) {
            // Mostly the previous line's indentation, or two more or less.
            indent = match next(6) {
                0 | 1 => indent,
                2 | 3 => indent + 2,
                4 => indent.saturating_sub(2),
                _ => next(5),
            };
            text.push_str(&" ".repeat(indent));
            text.push_str(HEADS[next(HEADS.len())]);
            // Values that break the subset are the last ones of the table: rarer.
            let value = next(VALUES.len()).min(next(VALUES.len()));
            text.push_str(VALUES[value]);
            if next(8) == 0 {
                text.push_str(" # comment");
            }
            if next(10) != 0 {
                text.push('\n');
            }
        }
        let theirs = libyaml(&text);
        libyaml_read += usize::from(theirs.is_some());
        if let Some(events) = ours(&text) {
            answered += 1;
            if events.iter().filter(|e| e.ends_with("Start")).count() >= 2 {
                structured += 1;
            }
            assert_eq!(Some(events), theirs, "events differ on {text:?}");
        }
    }
    eprintln!(
        "of {count} random texts libyaml read {libyaml_read}, the subset reader {answered} \
         ({structured} with nested collections)"
    );
    // Enough of them, with structure, for the comparison to mean something.
    assert!(
        answered * 2 > libyaml_read,
        "answered {answered} of the {libyaml_read} libyaml read"
    );
    assert!(
        structured * 50 > count,
        "only {structured} with nested collections"
    );
}

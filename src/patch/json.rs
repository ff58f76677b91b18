//! A JSON patch of `add` operations written straight to bytes: the patch is
//! the largest output of a warm admission, and building it through typed
//! k8s-openapi values, then `serde_json::Value`, then bytes cost more than
//! the rest of the review. Every string goes through serde_json's escaping;
//! every path token through JSON Pointer's (`~` as `~0`, `/` as `~1`).

use crate::plan;

/// A value the patch adds: an item of a pod list, or the whole list.
#[derive(Debug, Clone, Copy)]
pub enum Item<'a> {
    /// `{"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}`
    Env(&'a plan::EnvVar),
    /// `{"prefix": prefix, "secretRef": {"name": secret}}`
    EnvFrom(&'a plan::EnvFrom),
    /// `{"name": secret, "mountPath": path, "readOnly": true}`
    Mount(&'a plan::Mount),
    /// `{"name": secret, "secret": {"secretName": secret}}`
    Volume(&'a plan::Mount),
}

/// The operations written so far.
pub struct Ops {
    out: Vec<u8>,
    count: usize,
}

/// Whether `s` can be written between quotes as it is (no quote, backslash
/// or control character). Every byte is looked at, without stopping at the
/// first that is not plain, so that the compiler checks many at a time: the
/// strings a patch writes are short and nearly always plain.
pub(crate) fn plain(s: &str) -> bool {
    s.bytes()
        .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'))
}

fn string(out: &mut Vec<u8>, s: &str) {
    if plain(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(out, s).expect("a string serializes");
    }
}

impl Item<'_> {
    fn write(self, out: &mut Vec<u8>) {
        match self {
            Item::Env(e) => {
                out.extend_from_slice(br#"{"name":"#);
                string(out, &e.var);
                out.extend_from_slice(br#","valueFrom":{"secretKeyRef":{"name":"#);
                string(out, &e.secret);
                out.extend_from_slice(br#","key":"#);
                string(out, &e.key);
                out.extend_from_slice(b"}}}");
            }
            Item::EnvFrom(e) => {
                out.push(b'{');
                if let Some(p) = &e.prefix {
                    out.extend_from_slice(br#""prefix":"#);
                    string(out, p);
                    out.push(b',');
                }
                out.extend_from_slice(br#""secretRef":{"name":"#);
                string(out, &e.secret);
                out.extend_from_slice(b"}}");
            }
            Item::Mount(m) => {
                out.extend_from_slice(br#"{"name":"#);
                string(out, &m.secret);
                out.extend_from_slice(br#","mountPath":"#);
                string(out, &m.path);
                out.extend_from_slice(br#","readOnly":true}"#);
            }
            Item::Volume(m) => {
                out.extend_from_slice(br#"{"name":"#);
                string(out, &m.secret);
                out.extend_from_slice(br#","secret":{"secretName":"#);
                string(out, &m.secret);
                out.extend_from_slice(b"}}");
            }
        }
    }
}

/// Items written once each, to be copied into every container's operations:
/// a plan's entries are the same text in each container they go to.
pub struct Texts {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Texts {
    pub fn new<'a>(items: impl IntoIterator<Item = Item<'a>>) -> Texts {
        let items = items.into_iter();
        let mut ends = Vec::with_capacity(items.size_hint().0);
        let mut buf = Vec::with_capacity(ends.capacity() * 128);
        for item in items {
            item.write(&mut buf);
            ends.push(buf.len());
        }
        Texts { buf, ends }
    }

    /// The JSON text of the `i`th item.
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.buf[start..self.ends[i]]
    }

    /// The JSON text of each item, in order.
    pub fn all(&self) -> Vec<&[u8]> {
        (0..self.ends.len()).map(|i| self.get(i)).collect()
    }
}

/// The JSON Pointer of `path`, as it is written between the quotes of a
/// JSON string.
pub fn pointer(path: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.iter().map(|t| t.len() + 1).sum());
    write_pointer(&mut out, path);
    out
}

/// Writes [`pointer`]'s text for `path` to `out`.
fn write_pointer(out: &mut Vec<u8>, path: &[&str]) {
    for t in path {
        out.push(b'/');
        if plain(t) {
            // Checked as `plain` is, every byte at once.
            let unescaped = t.bytes().fold(true, |ok, b| ok & (b != b'~') & (b != b'/'));
            if unescaped {
                out.extend_from_slice(t.as_bytes());
                continue;
            }
            // JSON Pointer's escapes only (the label and annotation keys hold a '/').
            for &b in t.as_bytes() {
                match b {
                    b'~' => out.extend_from_slice(b"~0"),
                    b'/' => out.extend_from_slice(b"~1"),
                    b => out.push(b),
                }
            }
        } else {
            // JSON Pointer's escapes, then JSON's (without the quotes).
            let t = t.replace('~', "~0").replace('/', "~1");
            let quoted = serde_json::to_vec(&t).expect("a string serializes");
            out.extend_from_slice(&quoted[1..quoted.len() - 1]);
        }
    }
}

impl Ops {
    /// Ops whose bytes are expected to take about `bytes` (growing a large
    /// patch by doubling costs copies and allocator work on every admission).
    pub fn with_capacity(bytes: usize) -> Ops {
        let mut out = Vec::with_capacity(bytes);
        out.push(b'[');
        Ops { out, count: 0 }
    }

    /// Adds an operation at `path` whose value `value` writes.
    fn add(&mut self, path: &[&str], value: impl FnOnce(&mut Vec<u8>)) {
        self.add_with(|out| write_pointer(out, path), value);
    }

    /// Adds an operation whose path `path` writes (between the quotes) and
    /// whose value `value` writes.
    fn add_with(&mut self, path: impl FnOnce(&mut Vec<u8>), value: impl FnOnce(&mut Vec<u8>)) {
        if self.count > 0 {
            self.out.push(b',');
        }
        self.count += 1;
        self.out.extend_from_slice(br#"{"op":"add","path":""#);
        path(&mut self.out);
        self.out.extend_from_slice(br#"","value":"#);
        value(&mut self.out);
        self.out.push(b'}');
    }

    /// Adds the item whose JSON is `text` at the written [`pointer`].
    pub fn item(&mut self, pointer: &[u8], text: &[u8]) {
        self.add_with(
            |out| out.extend_from_slice(pointer),
            |out| out.extend_from_slice(text),
        );
    }

    /// Adds the list of the items whose JSON are `texts` at `path`.
    pub fn list(&mut self, path: &[&str], texts: &[&[u8]]) {
        self.add(path, |out| {
            out.push(b'[');
            for (i, text) in texts.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(text);
            }
            out.push(b']');
        });
    }

    /// Adds the string `value` at `path`.
    pub fn string(&mut self, path: &[&str], value: &str) {
        self.add(path, |out| string(out, value));
    }

    /// Adds at `path` the JSON string that `value` writes.
    pub fn string_with(&mut self, path: &[&str], value: impl FnOnce(&mut Vec<u8>)) {
        self.add(path, value);
    }

    /// Adds `{key: value}` at `path`.
    pub fn map(&mut self, path: &[&str], key: &str, value: &str) {
        self.map_with(path, key, |out| string(out, value));
    }

    /// Adds `{key: <the JSON string that value writes>}` at `path`.
    pub fn map_with(&mut self, path: &[&str], key: &str, value: impl FnOnce(&mut Vec<u8>)) {
        self.add(path, |out| {
            out.push(b'{');
            string(out, key);
            out.push(b':');
            value(out);
            out.push(b'}');
        });
    }

    /// The patch's JSON.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.push(b']');
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn writes_a_json_patch_with_escaped_pointers_and_strings() {
        let env = plan::EnvVar {
            var: "A\"B".into(),
            secret: "s\\1".into(),
            key: "k\n".into(),
        };
        let from = plan::EnvFrom {
            prefix: None,
            secret: "s".into(),
        };
        let prefixed = plan::EnvFrom {
            prefix: Some("P_".into()),
            secret: "t".into(),
        };
        let mount = plan::Mount {
            secret: "m".into(),
            path: "/x/\u{1}".into(),
        };
        let texts = Texts::new([
            Item::Env(&env),
            Item::EnvFrom(&from),
            Item::EnvFrom(&prefixed),
            Item::Volume(&mount),
            Item::Mount(&mount),
        ]);
        let mut ops = Ops::with_capacity(64);
        ops.item(
            &pointer(&["spec", "containers", "0", "env", "-"]),
            texts.get(0),
        );
        ops.list(
            &["spec", "containers", "0", "envFrom"],
            &[texts.get(1), texts.get(2)],
        );
        ops.list(&["spec", "volumes"], &[texts.get(3)]);
        ops.item(
            &pointer(&["spec", "containers", "0", "volumeMounts", "-"]),
            texts.get(4),
        );
        ops.string(&["metadata", "labels", "a.io/b~c"], "x\"y");
        ops.map(&["metadata", "annotations"], "k/1", "{\"v\":1}");
        ops.string(&["metadata", "annotations", "q\"\\/\u{7}é"], "é\u{7}");
        let bytes = ops.finish();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            json!([
                {"op": "add", "path": "/spec/containers/0/env/-", "value":
                    {"name": "A\"B", "valueFrom": {"secretKeyRef": {"name": "s\\1", "key": "k\n"}}}},
                {"op": "add", "path": "/spec/containers/0/envFrom", "value":
                    [{"secretRef": {"name": "s"}}, {"prefix": "P_", "secretRef": {"name": "t"}}]},
                {"op": "add", "path": "/spec/volumes", "value":
                    [{"name": "m", "secret": {"secretName": "m"}}]},
                {"op": "add", "path": "/spec/containers/0/volumeMounts/-", "value":
                    {"name": "m", "mountPath": "/x/\u{1}", "readOnly": true}},
                {"op": "add", "path": "/metadata/labels/a.io~1b~0c", "value": "x\"y"},
                {"op": "add", "path": "/metadata/annotations", "value": {"k/1": "{\"v\":1}"}},
                {"op": "add", "path": "/metadata/annotations/q\"\\~1\u{7}é", "value": "é\u{7}"}
            ])
        );
        let typed: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        let mut doc = json!({"metadata": {"labels": {}, "annotations": {}}, "spec": {"containers": [{"env": [], "volumeMounts": []}]}});
        json_patch::patch(&mut doc, &typed).unwrap();
        assert_eq!(doc["metadata"]["labels"]["a.io/b~c"], "x\"y");
        assert_eq!(doc["metadata"]["annotations"]["q\"\\/\u{7}é"], "é\u{7}");
        assert_eq!(Ops::with_capacity(64).finish(), b"[]");
    }
}

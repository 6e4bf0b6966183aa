//! containerd's filter syntax, as much as `List` (Walk) calls need:
//! `field==value`, `field!=value` and bare `field` (present), joined by
//! `,` (all must hold); fields `name`, `parent`, `kind` and
//! `labels.<key>` or `labels."<key>"`. containerd sends
//! `labels."containerd.io/snapshot.ref"==<target>,parent==<parent>` after
//! a remote Prepare answered AlreadyExists.

use crate::api::containerd::services::snapshots::v1 as pb;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Equal(String),
    NotEqual(String),
    Present,
}

/// One filter: conditions that must all hold.
#[derive(Debug, Clone)]
pub struct Filter {
    conditions: Vec<(Vec<String>, Op)>,
}

impl Filter {
    /// Parses a filter string.
    pub fn parse(text: &str) -> Result<Filter, String> {
        let mut conditions = Vec::new();
        for part in split_outside_quotes(text, ',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, op) = if let Some((field, value)) = split_op(part, "!=") {
                (field, Op::NotEqual(unquote(value)))
            } else if let Some((field, value)) = split_op(part, "==") {
                (field, Op::Equal(unquote(value)))
            } else {
                (part, Op::Present)
            };
            let path = split_outside_quotes(field.trim(), '.')
                .into_iter()
                .map(|s| unquote(s.trim()))
                .collect::<Vec<_>>();
            // `labels.a.b` without quotes: the key is everything after `labels.`.
            let path = match path.split_first() {
                Some((first, rest)) if first == "labels" && rest.len() > 1 => {
                    vec![first.clone(), rest.join(".")]
                }
                _ => path,
            };
            if path.is_empty() || path[0].is_empty() {
                return Err(format!("filter {text:?}: empty field"));
            }
            conditions.push((path, op));
        }
        Ok(Filter { conditions })
    }

    /// Whether `info` passes every condition.
    pub fn matches(&self, info: &pb::Info) -> bool {
        self.conditions.iter().all(|(path, op)| {
            let value: Option<String> = match path.as_slice() {
                [field] if field == "name" => Some(info.name.clone()),
                [field] if field == "parent" => Some(info.parent.clone()),
                [field] if field == "kind" => Some(
                    match pb::Kind::try_from(info.kind).unwrap_or(pb::Kind::Unknown) {
                        pb::Kind::View => "view",
                        pb::Kind::Active => "active",
                        pb::Kind::Committed => "committed",
                        pb::Kind::Unknown => "unknown",
                    }
                    .to_string(),
                ),
                [labels, key] if labels == "labels" => info.labels.get(key).cloned(),
                // Unknown fields match nothing, like containerd's adaptor.
                _ => None,
            };
            match op {
                Op::Equal(want) => value.as_deref() == Some(want.as_str()),
                Op::NotEqual(want) => value.as_deref() != Some(want.as_str()),
                Op::Present => value.is_some_and(|v| !v.is_empty()),
            }
        })
    }
}

fn split_op<'a>(text: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if !quoted && text[i..].starts_with(op) {
            return Some((&text[..i], &text[i + op.len()..]));
        }
    }
    None
}

fn split_outside_quotes(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == separator && !quoted {
            parts.push(&text[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

fn unquote(text: &str) -> String {
    let text = text.trim();
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text)
        .replace("\\\"", "\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, parent: &str, labels: &[(&str, &str)]) -> pb::Info {
        pb::Info {
            name: name.into(),
            parent: parent.into(),
            kind: pb::Kind::Committed as i32,
            created_at: None,
            updated_at: None,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn the_filter_containerd_sends_after_a_remote_prepare() {
        let filter =
            Filter::parse(r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent==sha256:def"#)
                .unwrap();
        let yes = info(
            "sha256:abc",
            "sha256:def",
            &[("containerd.io/snapshot.ref", "sha256:abc")],
        );
        let other_parent = info(
            "sha256:abc",
            "",
            &[("containerd.io/snapshot.ref", "sha256:abc")],
        );
        let no_label = info("sha256:abc", "sha256:def", &[]);
        assert!(filter.matches(&yes));
        assert!(!filter.matches(&other_parent));
        assert!(!filter.matches(&no_label));
        let empty_parent =
            Filter::parse(r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="""#).unwrap();
        assert!(empty_parent.matches(&other_parent));
    }

    #[test]
    fn kinds_presence_and_not_equal() {
        let i = info("a", "", &[("x.y", "1")]);
        assert!(Filter::parse("kind==committed").unwrap().matches(&i));
        assert!(Filter::parse("labels.x.y").unwrap().matches(&i));
        assert!(Filter::parse("name!=b").unwrap().matches(&i));
        assert!(!Filter::parse("labels.\"z\"").unwrap().matches(&i));
        assert!(!Filter::parse("bogus==1").unwrap().matches(&i));
    }
}

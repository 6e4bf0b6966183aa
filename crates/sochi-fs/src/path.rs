//! Name cleaning, as the reference does it (docs/format.md §3.6).

/// The components of `Clean("/" + name)` with the leading `/` stripped: empty
/// and `.` components are dropped, `..` removes the previous component and
/// cannot climb above the root. No components means the root itself.
pub(crate) fn clean(name: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    for component in name.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            _ => out.push(component),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::clean;

    fn joined(name: &str) -> String {
        let parts: Vec<String> = clean(name.as_bytes())
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        parts.join("/")
    }

    #[test]
    fn cleans_like_go_path_clean() {
        assert_eq!(joined("./a/b/"), "a/b");
        assert_eq!(joined("/a//b/./c"), "a/b/c");
        assert_eq!(joined("../../etc/x"), "etc/x");
        assert_eq!(joined("a/../../b"), "b");
        assert_eq!(joined("./"), "");
        assert_eq!(joined(""), "");
        assert_eq!(joined("a/b/.."), "a");
    }
}

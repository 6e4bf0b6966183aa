//! Image references as users write them, normalized as Docker normalizes
//! them (`distribution/reference.ParseNormalizedNamed`):
//!
//! - no registry (first component has no `.` or `:` and is not `localhost`)
//!   → `docker.io`, and a one-component name gets `library/`;
//! - `index.docker.io` → `docker.io` (and `docker.io` is reached at
//!   `registry-1.docker.io`, see [`Reference::api_host`]);
//! - `name[:tag][@digest]`, where a digest wins over a tag for lookups.

use std::fmt;

use crate::error::{Error, Result};

/// The registry used when a reference names none.
pub(crate) const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";
const MAX_REPOSITORY_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A parsed image reference: `registry/repository[:tag][@digest]`.
///
/// Invariants (kept by [`Reference::parse`], [`Reference::with_tag`] and
/// [`Reference::with_digest`] when given valid input): `registry` is a host
/// with an optional port, `repository` is lower-case path components,
/// `digest` is `sha256:<64 hex>` or `sha512:<128 hex>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host and optional port, e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag, if one was written.
    pub tag: Option<String>,
    /// Digest, if one was written.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses a reference as users write it (`busybox`,
    /// `127.0.0.1:5000/a/b:v1`, `ghcr.io/o/r@sha256:…`, `r:tag@sha256:…`).
    pub fn parse(text: &str) -> Result<Reference> {
        let invalid = |reason: String| Error::InvalidReference {
            reference: text.chars().take(300).collect(),
            reason,
        };
        if text.is_empty() {
            return Err(invalid("empty".into()));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(invalid(format!(
                "a reference has no scheme ({scheme}://); write host/repository and use the plain-http option for http"
            )));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                check_digest(digest).map_err(invalid)?;
                (rest, Some(digest.to_string()))
            }
            None => (text, None),
        };
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
                let tag = &rest[colon + 1..];
                check_tag(tag).map_err(invalid)?;
                (&rest[..colon], Some(tag.to_string()))
            }
            _ => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first.to_string(), remainder.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        check_registry(&registry).map_err(invalid)?;
        let registry = if registry == DOCKER_HUB_LEGACY {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        check_repository(&repository).map_err(invalid)?;
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The same repository at `digest` (the tag is kept for display; the
    /// digest is what [`Reference::reference`] returns).
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// The same repository at `tag`, without a digest.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }

    /// What goes after `/manifests/`: the digest if any, else the tag, else
    /// `latest`.
    pub fn reference(&self) -> String {
        self.digest
            .clone()
            .or_else(|| self.tag.clone())
            .unwrap_or_else(|| "latest".to_string())
    }

    /// The host (and port) the registry API is reached at:
    /// `registry-1.docker.io` for Docker Hub, else [`Reference::registry`].
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// Whether the registry is this machine (`localhost`, `127.0.0.1`,
    /// `[::1]`, any port), which is reached over plain HTTP by default.
    pub fn is_loopback(&self) -> bool {
        matches!(
            host_without_port(&self.registry),
            "localhost" | "127.0.0.1" | "[::1]"
        )
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    /// `registry/repository[:tag][@digest]`; `:latest` when neither is set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        if self.tag.is_none() && self.digest.is_none() {
            write!(f, ":latest")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Reference> {
        Reference::parse(s)
    }
}

/// `host` of `host[:port]`, brackets kept for IPv6.
pub(crate) fn host_without_port(registry: &str) -> &str {
    if registry.starts_with('[') {
        match registry.find(']') {
            Some(end) => &registry[..=end],
            None => registry,
        }
    } else {
        registry.split(':').next().unwrap_or(registry)
    }
}

/// Checks `algorithm:hex` for the algorithms this client can verify.
pub(crate) fn check_digest(digest: &str) -> std::result::Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!("digest {digest:?} is not algorithm:hex"));
    };
    let want = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        _ => {
            return Err(format!(
                "digest algorithm {algorithm:?} is not supported (sha256, sha512)"
            ))
        }
    };
    if hex.len() != want || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "digest {digest:?} must have {want} lower-case hex digits after {algorithm}:"
        ));
    }
    Ok(())
}

fn check_tag(tag: &str) -> std::result::Result<(), String> {
    let ok_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let valid = !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag.bytes().next().is_some_and(ok_char)
        && tag.bytes().all(|b| ok_char(b) || b == b'.' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} must be 1 to {MAX_TAG_LEN} of [A-Za-z0-9_.-], not starting with . or -"
        ))
    }
}

fn check_registry(registry: &str) -> std::result::Result<(), String> {
    let bad = || format!("registry {registry:?} is not host[:port]");
    let (host, port) = if let Some(inner) = registry.strip_prefix('[') {
        let (ip, after) = inner.split_once(']').ok_or_else(bad)?;
        if ip.is_empty()
            || !ip
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(bad());
        }
        match after {
            "" => (ip, None),
            _ => (ip, Some(after.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };
    if !registry.starts_with('[') {
        let label_ok = |l: &str| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if host.is_empty() || !host.split('.').all(label_ok) {
            return Err(bad());
        }
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
        if !valid {
            return Err(format!(
                "registry {registry:?} has an invalid port {port:?}"
            ));
        }
    }
    Ok(())
}

fn check_repository(repository: &str) -> std::result::Result<(), String> {
    if repository.is_empty() {
        return Err("the repository name is empty".into());
    }
    if repository.len() > MAX_REPOSITORY_LEN {
        return Err(format!(
            "the repository name is {} characters, more than {MAX_REPOSITORY_LEN}",
            repository.len()
        ));
    }
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("repository name {repository:?} must be lower-case"));
    }
    for component in repository.split('/') {
        if !component_ok(component) {
            return Err(format!(
                "repository component {component:?} must be [a-z0-9] runs joined by '.', '_', '__' or dashes"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`, by hand.
fn component_ok(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        let sep_start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[sep_start..i];
        let valid = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !valid {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_normalize_like_docker() {
        // (input, registry, repository, tag, digest, display)
        type Row<'a> = (
            &'a str,
            &'a str,
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
            &'a str,
        );
        let table: &[Row] = &[
            (
                "busybox",
                "docker.io",
                "library/busybox",
                None,
                None,
                "docker.io/library/busybox:latest",
            ),
            (
                "busybox:1.36",
                "docker.io",
                "library/busybox",
                Some("1.36"),
                None,
                "docker.io/library/busybox:1.36",
            ),
            (
                "user/app",
                "docker.io",
                "user/app",
                None,
                None,
                "docker.io/user/app:latest",
            ),
            (
                "docker.io/busybox",
                "docker.io",
                "library/busybox",
                None,
                None,
                "docker.io/library/busybox:latest",
            ),
            (
                "index.docker.io/library/busybox:x",
                "docker.io",
                "library/busybox",
                Some("x"),
                None,
                "docker.io/library/busybox:x",
            ),
            (
                "127.0.0.1:5000/busybox:latest",
                "127.0.0.1:5000",
                "busybox",
                Some("latest"),
                None,
                "127.0.0.1:5000/busybox:latest",
            ),
            (
                "localhost/a/b/c",
                "localhost",
                "a/b/c",
                None,
                None,
                "localhost/a/b/c:latest",
            ),
            (
                "localhost:5000/a",
                "localhost:5000",
                "a",
                None,
                None,
                "localhost:5000/a:latest",
            ),
            (
                "[::1]:5000/a:t",
                "[::1]:5000",
                "a",
                Some("t"),
                None,
                "[::1]:5000/a:t",
            ),
            (
                "ghcr.io/o/r__x.y-z",
                "ghcr.io",
                "o/r__x.y-z",
                None,
                None,
                "ghcr.io/o/r__x.y-z:latest",
            ),
        ];
        for (text, registry, repository, tag, digest, display) in table {
            let r = Reference::parse(text).unwrap();
            assert_eq!(r.registry, *registry, "{text}");
            assert_eq!(r.repository, *repository, "{text}");
            assert_eq!(r.tag.as_deref(), *tag, "{text}");
            assert_eq!(r.digest.as_deref(), *digest, "{text}");
            assert_eq!(r.to_string(), *display, "{text}");
        }
    }

    #[test]
    fn digests_and_tag_plus_digest_parse() {
        let r = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.reference(), D);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        let r = Reference::parse(&format!("r.example:443/a/b:v1@{D}")).unwrap();
        assert_eq!(
            (r.tag.as_deref(), r.digest.as_deref()),
            (Some("v1"), Some(D))
        );
        assert_eq!(r.reference(), D);
        assert_eq!(r.to_string(), format!("r.example:443/a/b:v1@{D}"));
    }

    #[test]
    fn api_host_and_loopback() {
        assert_eq!(
            Reference::parse("busybox").unwrap().api_host(),
            "registry-1.docker.io"
        );
        assert_eq!(Reference::parse("q.io/a").unwrap().api_host(), "q.io");
        for text in [
            "localhost/a",
            "localhost:1/a",
            "127.0.0.1:5000/a",
            "[::1]/a",
            "[::1]:80/a",
        ] {
            assert!(Reference::parse(text).unwrap().is_loopback(), "{text}");
        }
        assert!(!Reference::parse("127.0.0.2:5000/a").unwrap().is_loopback());
        assert!(!Reference::parse("busybox").unwrap().is_loopback());
    }

    #[test]
    fn with_tag_and_with_digest() {
        let r = Reference::parse("127.0.0.1:5000/busybox:latest").unwrap();
        let d = r.with_digest(D);
        assert_eq!(d.reference(), D);
        let t = d.with_tag("sha256-abc");
        assert_eq!(
            (t.tag.as_deref(), t.digest.as_deref()),
            (Some("sha256-abc"), None)
        );
        assert_eq!(t.reference(), "sha256-abc");
    }

    #[test]
    fn invalid_references_say_why() {
        let table: &[(&str, &str)] = &[
            ("", "empty"),
            ("https://r.example/a", "no scheme"),
            ("Busybox", "lower-case"),
            ("r.example/Upper", "lower-case"),
            ("a/b:", "tag \"\""),
            ("a:-x", "tag"),
            ("a@sha256:abc", "64 lower-case hex"),
            ("a@md5:0123", "not supported"),
            ("a@nocolon", "algorithm:hex"),
            ("r.example:0/a", "invalid port"),
            ("r.example:99999/a", "invalid port"),
            ("r.example:x/a", "invalid port"),
            ("r_x.example/a", "not host[:port]"),
            ("r.example/a//b", "component \"\""),
            ("r.example/a-", "component \"a-\""),
            ("r.example/a..b", "component"),
            ("r.example/", "empty"),
        ];
        for (text, want) in table {
            let e = Reference::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.starts_with("invalid reference"), "{text:?}: {e}");
        }
        let long = format!("r.example/{}", "a".repeat(256));
        assert!(Reference::parse(&long)
            .unwrap_err()
            .to_string()
            .contains("more than 255"));
    }
}

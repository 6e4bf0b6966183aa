//! This process's mount table, `/proc/self/mountinfo`.

use std::path::Path;

/// The filesystem type mounted at `mountpoint` (absolute, spelled as the
/// table spells mount points: no symlinks), the top one if several are
/// stacked there; `None` if nothing is.
pub fn mount_type(mountpoint: &Path) -> std::io::Result<Option<String>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let wanted = mountpoint.as_os_str().as_encoded_bytes();
    // The last line for a mount point is the mount on top.
    Ok(table.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let point = unescape(fields.get(4)?);
        let dash = fields.iter().position(|f| *f == "-")?;
        if point.as_bytes() != wanted {
            return None;
        }
        fields.get(dash + 1).map(|fstype| fstype.to_string())
    }))
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_root_and_not_a_plain_directory() {
        assert!(mount_type(Path::new("/")).unwrap().is_some());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(mount_type(dir.path()).unwrap(), None);
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
    }
}

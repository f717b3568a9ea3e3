//! Reads the example manifests under `docs/examples/`, shared by the API
//! reference generator and the tests.

use std::path::Path;

use crate::Error;

/// `(file name, contents)` of every `*.yaml` directly in `dir`, sorted by name.
pub fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, Error> {
    let io_err = |path: &Path, source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let path = entry.map_err(|e| io_err(dir, e))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push((name, text));
    }
    out.sort();
    Ok(out)
}

/// The message an invalid example must be rejected with: its first line,
/// `# expect: <message>`.
pub fn expected_error(text: &str) -> Option<&str> {
    text.lines()
        .next()?
        .strip_prefix("# expect:")
        .map(str::trim)
        .filter(|m| !m.is_empty())
}

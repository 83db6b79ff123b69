//! Checks `krew-manifest/hsd.yaml` against krew's own validation rules, without a cluster
//! and without krew.
//!
//! Rules come from kubernetes-sigs/krew:
//! - `internal/index/validation/validate.go` (`ValidatePlugin`, `validatePlatform`,
//!   `validateFiles`, `validateSelector`, `IsSafePluginName`),
//! - `internal/installation/semver/version.go` (leading `v`, then
//!   `k8s.io/apimachinery/pkg/util/version.ParseSemantic`),
//! - `cmd/validate-krew-manifest/main.go` (name = file name, `.yaml` extension, every
//!   platform matches a supported os/arch, no os/arch matched twice, line-length
//!   warnings, a LICENSE file must be installed).
//!
//! On top of those: the version is the crate version, the five release targets each
//! appear exactly once with the right archive URL and binary, and a sha256 placeholder
//! is only allowed while the file says so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

const API_VERSION: &str = "krew.googlecontainertools.github.com/v1alpha2";
const KIND: &str = "Plugin";
const REPO: &str = "https://github.com/paia-tech/kubectl-hsd";
/// The all-zero digest the manifest uses until a release exists (see the file's header).
const SHA256_PLACEHOLDER: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Platforms the manifest must ship: (os, arch, bin, archive extension).
const TARGETS: [(&str, &str, &str, &str); 5] = [
    ("linux", "amd64", "kubectl-hsd", "tar.gz"),
    ("linux", "arm64", "kubectl-hsd", "tar.gz"),
    ("darwin", "amd64", "kubectl-hsd", "tar.gz"),
    ("darwin", "arm64", "kubectl-hsd", "tar.gz"),
    ("windows", "amd64", "kubectl-hsd.exe", "zip"),
];

/// `allPlatforms()` of krew's cmd/validate-krew-manifest: the os/arch pairs krew supports.
const KREW_PLATFORMS: [(&str, &str); 11] = [
    ("windows", "386"),
    ("windows", "amd64"),
    ("windows", "arm64"),
    ("linux", "386"),
    ("linux", "amd64"),
    ("linux", "arm"),
    ("linux", "arm64"),
    ("linux", "ppc64le"),
    ("darwin", "386"),
    ("darwin", "amd64"),
    ("darwin", "arm64"),
];

/// `windowsForbidden` of krew's validate.go.
const WINDOWS_FORBIDDEN: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// `licenseFiles` of krew's cmd/validate-krew-manifest (compared lower-cased).
const LICENSE_FILES: [&str; 8] = [
    "license",
    "license.txt",
    "license.md",
    "licenses",
    "licenses.txt",
    "licenses.md",
    "copying",
    "copying.txt",
];

struct Manifest {
    path: PathBuf,
    text: String,
    doc: Value,
}

/// The manifest under test: the committed one, or `HSD_KREW_MANIFEST` (hack/release.sh checks
/// the manifest it wrote this way).
fn manifest() -> Manifest {
    let path = std::env::var_os("HSD_KREW_MANIFEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("krew-manifest")
                .join("hsd.yaml")
        });
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let doc = serde_saphyr::from_str::<Value>(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    assert!(
        doc.is_object(),
        "the manifest must be a YAML mapping, got {doc}"
    );
    Manifest { path, text, doc }
}

fn obj<'a>(v: &'a Value, what: &str) -> &'a Map<String, Value> {
    v.as_object()
        .unwrap_or_else(|| panic!("{what} must be a mapping, got {v}"))
}

/// A string field; absent or empty is `""` (as Go's zero value in krew's structs).
fn string<'a>(m: &'a Map<String, Value>, key: &str, what: &str) -> &'a str {
    match m.get(key) {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s,
        Some(other) => panic!("{what}.{key} must be a string, got {other}"),
    }
}

/// A field of a mapping, `null` when absent (`Map`'s `[]` would panic without a message).
fn field<'a>(m: &'a Map<String, Value>, key: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    m.get(key).unwrap_or(&NULL)
}

fn spec(m: &Manifest) -> &Map<String, Value> {
    obj(
        m.doc.get("spec").expect("the manifest has no `spec`"),
        "spec",
    )
}

fn platforms(m: &Manifest) -> Vec<&Map<String, Value>> {
    let list = spec(m)
        .get("platforms")
        .and_then(Value::as_array)
        .expect("spec.platforms must be a list");
    list.iter()
        .enumerate()
        .map(|(i, p)| obj(p, &format!("spec.platforms[{i}]")))
        .collect()
}

fn assert_only_keys(m: &Map<String, Value>, allowed: &[&str], what: &str) {
    for key in m.keys() {
        assert!(
            allowed.contains(&key.as_str()),
            "{what} has unknown key `{key}` (krew ignores unknown keys silently, so this is \
             most likely a typo); allowed: {allowed:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Top level: apiVersion, kind, name (validate.go ValidatePlugin, validate-krew-manifest)
// ---------------------------------------------------------------------------------------

#[test]
fn api_version_and_kind_are_the_supported_ones() {
    let m = manifest();
    let top = obj(&m.doc, "manifest");
    assert_only_keys(
        top,
        &["apiVersion", "kind", "metadata", "spec"],
        "the manifest",
    );
    assert_eq!(
        string(top, "apiVersion", "manifest"),
        API_VERSION,
        "unsupported apiVersion"
    );
    assert_eq!(
        string(top, "kind", "manifest"),
        KIND,
        "kind must be {KIND:?}"
    );
}

#[test]
fn file_has_yaml_extension_and_name_matches_file_name() {
    let m = manifest();
    assert_eq!(
        m.path.extension().and_then(|e| e.to_str()),
        Some("yaml"),
        "krew manifests must use the .yaml extension"
    );
    let stem = m
        .path
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("file stem");
    let metadata = obj(m.doc.get("metadata").expect("no `metadata`"), "metadata");
    let name = string(metadata, "name", "metadata");
    assert_eq!(
        name, stem,
        "metadata.name must equal the file name without .yaml"
    );
    assert_eq!(
        name, "hsd",
        "the plugin must be named `hsd` so it runs as `kubectl hsd`"
    );
}

#[test]
fn plugin_name_is_safe() {
    let m = manifest();
    let name = string(obj(&m.doc["metadata"], "metadata"), "name", "metadata");
    // safePluginRegexp = ^[\w-]+$ (Go's \w is ASCII [0-9A-Za-z_]).
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        "plugin name {name:?} must match ^[\\w-]+$"
    );
    assert!(
        !WINDOWS_FORBIDDEN
            .iter()
            .any(|f| f.eq_ignore_ascii_case(name)),
        "plugin name {name:?} is a reserved Windows file name"
    );
}

// ---------------------------------------------------------------------------------------
// spec: descriptions, homepage, version
// ---------------------------------------------------------------------------------------

#[test]
fn spec_uses_only_known_keys() {
    let m = manifest();
    assert_only_keys(
        spec(&m),
        &[
            "version",
            "shortDescription",
            "description",
            "caveats",
            "homepage",
            "platforms",
        ],
        "spec",
    );
}

#[test]
fn short_description_is_present_single_line_and_short() {
    let m = manifest();
    let short = string(spec(&m), "shortDescription", "spec");
    assert!(
        !short.trim().is_empty(),
        "spec.shortDescription is required"
    );
    assert!(
        !short.contains(['\r', '\n']),
        "spec.shortDescription must not contain line breaks: {short:?}"
    );
    assert!(
        short.chars().count() < 50,
        "spec.shortDescription must be under 50 characters ({}): {short:?}",
        short.chars().count()
    );
}

/// validate-krew-manifest's validateLineLength: a longer line is only fine if it is one word.
fn assert_line_length(text: &str, max: usize, what: &str) {
    for line in text.split('\n') {
        assert!(
            line.len() <= max || !line.trim().contains(' '),
            "{what} has a line longer than {max} characters ({}): {line:?}",
            line.len()
        );
    }
}

#[test]
fn descriptions_respect_krew_line_lengths() {
    let m = manifest();
    let spec = spec(&m);
    let description = string(spec, "description", "spec");
    assert!(
        !description.trim().is_empty(),
        "spec.description should explain the plugin"
    );
    assert_line_length(description, 80, "spec.description");
    assert_line_length(
        string(spec, "shortDescription", "spec"),
        70,
        "spec.shortDescription",
    );
    assert_line_length(string(spec, "caveats", "spec"), 80, "spec.caveats");
}

#[test]
fn homepage_is_the_repository() {
    let m = manifest();
    let homepage = string(spec(&m), "homepage", "spec");
    assert_eq!(homepage, REPO, "spec.homepage must point at the repository");
    assert!(
        homepage.starts_with("https://"),
        "spec.homepage must use https"
    );
}

/// `k8s.io/apimachinery/pkg/util/version.ParseSemantic` after krew's leading-`v` check:
/// exactly MAJOR.MINOR.PATCH without leading zeros, optional `-pre.release` (numeric
/// identifiers without leading zeros) and `+build` (identifiers [0-9A-Za-z-]+).
fn parse_krew_semver(s: &str) -> Result<(u64, u64, u64), String> {
    let rest = s
        .strip_prefix('v')
        .ok_or_else(|| format!("{s:?} does not start with 'v'"))?;
    let (rest, build) = match rest.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (rest, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let ident_ok =
        |id: &str| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let numeric = |n: &str| -> Result<u64, String> {
        if n.is_empty() || !n.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("{s:?}: {n:?} is not a number"));
        }
        if n.len() > 1 && n.starts_with('0') {
            return Err(format!("{s:?}: {n:?} has a leading zero"));
        }
        n.parse().map_err(|e| format!("{s:?}: {n:?}: {e}"))
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() != 3 {
        return Err(format!(
            "{s:?} must have exactly three components MAJOR.MINOR.PATCH"
        ));
    }
    if let Some(pre) = pre {
        for id in pre.split('.') {
            if !ident_ok(id) {
                return Err(format!("{s:?}: invalid pre-release identifier {id:?}"));
            }
            if id.chars().all(|c| c.is_ascii_digit()) {
                numeric(id)?;
            }
        }
    }
    if let Some(build) = build
        && !build.split('.').all(ident_ok)
    {
        return Err(format!("{s:?}: invalid build metadata {build:?}"));
    }
    Ok((numeric(parts[0])?, numeric(parts[1])?, numeric(parts[2])?))
}

#[test]
fn semver_parser_rejects_what_krew_rejects() {
    // Guards the helper: if it accepted everything, the version test would prove nothing.
    for bad in [
        "0.1.0",
        "v0.1",
        "v0.1.0.0",
        "v01.1.0",
        "v0.1.x",
        "v0.1.0-",
        "v0.1.0-01",
        "v0.1.0+",
        "",
    ] {
        assert!(parse_krew_semver(bad).is_err(), "{bad:?} must be rejected");
    }
    for good in ["v0.1.0", "v1.2.3-rc.1", "v1.2.3+build.5", "v10.0.0-alpha-1"] {
        assert!(parse_krew_semver(good).is_ok(), "{good:?} must be accepted");
    }
}

#[test]
fn version_is_v_prefixed_semver_equal_to_the_crate_version() {
    let m = manifest();
    let version = string(spec(&m), "version", "spec");
    assert!(!version.is_empty(), "spec.version is required");
    if let Err(e) = parse_krew_semver(version) {
        panic!("spec.version is not a version krew accepts: {e}");
    }
    assert_eq!(
        version,
        format!("v{}", env!("CARGO_PKG_VERSION")),
        "spec.version must be `v` + the crate version in Cargo.toml"
    );
}

// ---------------------------------------------------------------------------------------
// Platforms (validate.go validatePlatform / validateFiles / validateSelector)
// ---------------------------------------------------------------------------------------

#[test]
fn every_platform_is_structurally_valid() {
    let m = manifest();
    let platforms = platforms(&m);
    assert!(!platforms.is_empty(), "spec.platforms must not be empty");
    for (i, p) in platforms.iter().enumerate() {
        let what = format!("spec.platforms[{i}]");
        assert_only_keys(p, &["selector", "uri", "sha256", "files", "bin"], &what);

        let uri = string(p, "uri", &what);
        assert!(!uri.is_empty(), "{what}.uri has to be set");
        assert!(
            uri.starts_with("https://"),
            "{what}.uri must use https: {uri}"
        );

        let sha = string(p, "sha256", &what);
        assert!(!sha.is_empty(), "{what}.sha256 has to be set");
        assert!(
            sha.len() == 64 && sha.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
            "{what}.sha256 must match ^[a-f0-9]{{64}}$: {sha:?}"
        );

        let bin = string(p, "bin", &what);
        assert!(!bin.is_empty(), "{what}.bin has to be set");
        assert_relative_inside(bin, &format!("{what}.bin"));

        let files = p.get("files").and_then(Value::as_array).unwrap_or_else(|| {
            panic!("{what}.files must be a non-empty list (this manifest always names its files)")
        });
        assert!(
            !files.is_empty(),
            "{what}.files has to be unspecified or non-empty"
        );
        for (j, op) in files.iter().enumerate() {
            let fwhat = format!("{what}.files[{j}]");
            let op = obj(op, &fwhat);
            assert_only_keys(op, &["from", "to"], &fwhat);
            let from = string(op, "from", &fwhat);
            let to = string(op, "to", &fwhat);
            assert!(!from.is_empty(), "{fwhat}.from has to be set");
            assert!(!to.is_empty(), "{fwhat}.to has to be set");
            assert_relative_inside(from, &format!("{fwhat}.from"));
            assert_relative_inside(to, &format!("{fwhat}.to"));
        }

        validate_selector(p.get("selector"), &what);
    }
}

/// Paths in `files` and `bin` are relative to the archive / install dir and must stay in it.
fn assert_relative_inside(path: &str, what: &str) {
    assert!(
        !path.starts_with('/') && !path.starts_with('\\') && !path.contains(':'),
        "{what} must be a relative path: {path:?}"
    );
    assert!(
        !path.split(['/', '\\']).any(|c| c == ".."),
        "{what} must not leave its directory: {path:?}"
    );
}

fn validate_selector(sel: Option<&Value>, what: &str) {
    let sel = match sel {
        None | Some(Value::Null) => panic!("{what}.selector: nil selector is not supported"),
        Some(s) => obj(s, &format!("{what}.selector")),
    };
    assert_only_keys(
        sel,
        &["matchLabels", "matchExpressions"],
        &format!("{what}.selector"),
    );
    let labels = sel.get("matchLabels").filter(|v| !v.is_null());
    let exprs = sel.get("matchExpressions").filter(|v| !v.is_null());
    let exprs_len = exprs.and_then(Value::as_array).map_or(0, Vec::len);
    assert!(
        labels.is_some() || exprs_len > 0,
        "{what}.selector: empty selector is not supported"
    );
    if let Some(labels) = labels {
        let labels = obj(labels, &format!("{what}.selector.matchLabels"));
        assert!(
            !labels.is_empty(),
            "{what}.selector: matchLabels specified but empty"
        );
        for (k, v) in labels {
            assert!(
                k == "os" || k == "arch",
                "{what}.selector: key {k:?} not supported"
            );
            assert!(
                v.is_string(),
                "{what}.selector.matchLabels.{k} must be a string"
            );
        }
    }
    if let Some(exprs) = exprs {
        let exprs = exprs
            .as_array()
            .unwrap_or_else(|| panic!("{what}.selector.matchExpressions must be a list"));
        assert!(
            !exprs.is_empty(),
            "{what}.selector: matchExpressions specified but empty"
        );
        for e in exprs {
            let key = e.get("key").and_then(Value::as_str).unwrap_or("");
            assert!(
                key == "os" || key == "arch",
                "{what}.selector: key {key:?} not supported"
            );
        }
    }
}

/// `metav1.LabelSelectorAsSelector(sel).Matches({os, arch})`.
fn selector_matches(sel: &Value, os: &str, arch: &str) -> bool {
    let label = |k: &str| match k {
        "os" => Some(os),
        "arch" => Some(arch),
        _ => None,
    };
    if let Some(labels) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in labels {
            if label(k) != v.as_str() {
                return false;
            }
        }
    }
    if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let key = e.get("key").and_then(Value::as_str).unwrap_or("");
            let op = e.get("operator").and_then(Value::as_str).unwrap_or("");
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|vs| vs.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let have = label(key);
            let ok = match op {
                "In" => have.is_some_and(|h| values.contains(&h)),
                "NotIn" => have.is_none_or(|h| !values.contains(&h)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                other => panic!("unsupported matchExpressions operator {other:?}"),
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

#[test]
fn every_platform_matches_a_supported_os_arch_and_none_overlap() {
    let m = manifest();
    let platforms = platforms(&m);
    for (i, p) in platforms.iter().enumerate() {
        let sel = field(p, "selector");
        assert!(
            KREW_PLATFORMS
                .iter()
                .any(|(os, arch)| selector_matches(sel, os, arch)),
            "spec.platforms[{i}]'s selector {sel} doesn't match any platform krew supports"
        );
    }
    for (os, arch) in KREW_PLATFORMS {
        let matching: Vec<usize> = platforms
            .iter()
            .enumerate()
            .filter(|(_, p)| selector_matches(field(p, "selector"), os, arch))
            .map(|(i, _)| i)
            .collect();
        assert!(
            matching.len() <= 1,
            "spec.platforms at indexes {matching:?} have overlapping selectors for {os}/{arch}"
        );
    }
}

#[test]
fn each_release_target_appears_exactly_once_with_its_archive_and_bin() {
    let m = manifest();
    let platforms = platforms(&m);
    let version = string(spec(&m), "version", "spec");
    // A manifest written by hack/release.sh lists only the platforms it built (Linux always);
    // the committed placeholder manifest lists all five.
    let released = !m.text.contains("PLACEHOLDER");
    let mut served = 0;
    for (os, arch, bin, ext) in TARGETS {
        let matching: Vec<&&Map<String, Value>> = platforms
            .iter()
            .filter(|p| selector_matches(field(p, "selector"), os, arch))
            .collect();
        if released && matching.is_empty() && os != "linux" {
            continue;
        }
        served += 1;
        assert_eq!(
            matching.len(),
            1,
            "{os}/{arch} must be served by exactly one platform"
        );
        let p = matching[0];
        let what = format!("platform {os}/{arch}");

        let labels = field(p, "selector")["matchLabels"]
            .as_object()
            .unwrap_or_else(|| panic!("{what}: selector must use matchLabels"));
        let expected: Map<String, Value> = [
            ("os".to_string(), Value::from(os)),
            ("arch".to_string(), Value::from(arch)),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            labels, &expected,
            "{what}: matchLabels must be exactly {{os, arch}}"
        );

        assert_eq!(string(p, "bin", &what), bin, "{what}: wrong bin");
        let uri = string(p, "uri", &what);
        assert_eq!(
            uri,
            format!("{REPO}/releases/download/{version}/kubectl-hsd_{version}_{os}_{arch}.{ext}"),
            "{what}: uri does not follow the release asset naming"
        );

        let files: Vec<(&str, &str)> = field(p, "files")
            .as_array()
            .expect("files")
            .iter()
            .map(|op| {
                (
                    op["from"].as_str().unwrap_or(""),
                    op["to"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert!(
            files.contains(&(bin, ".")),
            "{what}: the binary {bin:?} must be extracted to the install root, files: {files:?}"
        );
        let completer = bin.replace("kubectl-hsd", "kubectl_complete-hsd");
        assert!(
            files.contains(&(completer.as_str(), ".")),
            "{what}: the completion helper {completer:?} must be extracted beside the plugin, files: {files:?}"
        );
    }
    assert_eq!(
        platforms.len(),
        served,
        "spec.platforms must hold only release targets, each once"
    );
}

#[test]
fn every_platform_installs_a_license_file() {
    // validate-krew-manifest fails unless a LICENSE-like file lands in the install dir.
    let m = manifest();
    for (i, p) in platforms(&m).iter().enumerate() {
        let installs_license = field(p, "files").as_array().is_some_and(|ops| {
            ops.iter().filter_map(|op| op["from"].as_str()).any(|from| {
                let base = from
                    .rsplit(['/', '\\'])
                    .next()
                    .unwrap_or(from)
                    .to_ascii_lowercase();
                LICENSE_FILES.contains(&base.as_str())
            })
        });
        assert!(
            installs_license,
            "spec.platforms[{i}] must extract a LICENSE file"
        );
    }
}

#[test]
fn sha256_is_either_a_documented_placeholder_or_distinct_per_archive() {
    let m = manifest();
    let shas: Vec<&str> = platforms(&m)
        .iter()
        .map(|p| field(p, "sha256").as_str().unwrap_or(""))
        .collect();
    let placeholders = shas.iter().filter(|s| **s == SHA256_PLACEHOLDER).count();
    if placeholders > 0 {
        assert_eq!(
            placeholders,
            shas.len(),
            "sha256 mixes real digests and placeholders: {shas:?}"
        );
        let header: String = m
            .text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            header.contains("PLACEHOLDER") && header.contains("sha256"),
            "placeholder sha256 values must be explained in the file's header comment"
        );
    } else {
        // Five different archives cannot share a digest: a repeat is a copy-paste error.
        let distinct: BTreeSet<&str> = shas.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            shas.len(),
            "sha256 values repeat across archives: {shas:?}"
        );
    }
}

#[test]
fn uris_are_distinct_per_platform() {
    let m = manifest();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, p) in platforms(&m).iter().enumerate() {
        let uri = field(p, "uri").as_str().unwrap_or("");
        if let Some(j) = seen.insert(uri, i) {
            panic!("spec.platforms[{j}] and [{i}] download the same archive {uri}");
        }
    }
}

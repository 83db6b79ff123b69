//! Static checks of the root `Dockerfile` and `.dockerignore` (no Docker engine needed):
//! multi-stage, a static musl build with the locked dependency set, a distroless non-root
//! final stage, the binary at /usr/local/bin/kubectl-hsd as the exec-form ENTRYPOINT, and
//! no `latest` (or missing) image tags.

use std::path::Path;

/// The musl targets of the two image platforms: (TARGETARCH, Rust target).
const MUSL: [(&str, &str); 2] = [
    ("amd64", "x86_64-unknown-linux-musl"),
    ("arm64", "aarch64-unknown-linux-musl"),
];
const BIN_PATH: &str = "/usr/local/bin/kubectl-hsd";

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// One instruction: upper-cased keyword and its arguments, continuations joined.
#[derive(Debug)]
struct Instr {
    keyword: String,
    args: String,
}

#[derive(Debug)]
struct Stage {
    image: String,
    name: Option<String>,
    instrs: Vec<Instr>,
}

fn parse(text: &str) -> Vec<Stage> {
    // Join `\`-continued lines; drop comments and blank lines (also inside continuations,
    // as Docker does).
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            logical.push(std::mem::take(&mut current));
        }
    }
    assert!(
        current.trim().is_empty(),
        "the Dockerfile ends inside a line continuation"
    );

    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let keyword = keyword.to_ascii_uppercase();
        let args = args.trim().to_string();
        if keyword == "FROM" {
            let words: Vec<&str> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let image = words
                .first()
                .unwrap_or_else(|| panic!("FROM without an image"))
                .to_string();
            let name = match words.as_slice() {
                [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => Some(name.to_string()),
                [_] => None,
                other => panic!("cannot parse FROM {other:?}"),
            };
            stages.push(Stage {
                image,
                name,
                instrs: Vec::new(),
            });
        } else {
            let stage = stages
                .last_mut()
                .unwrap_or_else(|| panic!("{keyword} before the first FROM (only ARG may be)"));
            stage.instrs.push(Instr { keyword, args });
        }
    }
    stages
}

fn dockerfile() -> Vec<Stage> {
    let stages = parse(&read("Dockerfile"));
    assert!(
        stages.len() >= 2,
        "the Dockerfile must be multi-stage, found {} stage(s)",
        stages.len()
    );
    stages
}

fn all<'a>(stage: &'a Stage, keyword: &str) -> Vec<&'a str> {
    stage
        .instrs
        .iter()
        .filter(|i| i.keyword == keyword)
        .map(|i| i.args.as_str())
        .collect()
}

/// Splits `registry/repo:tag@digest` into (repo, tag, digest); the tag is looked for after
/// the last `/` so that a registry port is not mistaken for one.
fn image_ref(image: &str) -> (&str, Option<&str>, Option<&str>) {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[slash..].rfind(':') {
        Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..]), digest),
        None => (rest, None, digest),
    }
}

#[test]
fn image_ref_parsing_is_sound() {
    assert_eq!(
        image_ref("rust:1.95.0-bookworm"),
        ("rust", Some("1.95.0-bookworm"), None)
    );
    assert_eq!(
        image_ref("localhost:5000/x"),
        ("localhost:5000/x", None, None)
    );
    assert_eq!(
        image_ref("a/b:latest@sha256:ab"),
        ("a/b", Some("latest"), Some("sha256:ab"))
    );
}

#[test]
fn every_image_is_pinned_and_none_is_latest() {
    let stages = dockerfile();
    let mut names: Vec<&str> = Vec::new();
    let mut external: Vec<&str> = stages.iter().map(|s| s.image.as_str()).collect();
    for stage in &stages {
        for copy in all(stage, "COPY") {
            if let Some(from) = copy
                .split_whitespace()
                .find_map(|w| w.strip_prefix("--from="))
            {
                external.push(from);
            }
        }
    }
    for stage in &stages {
        if let Some(n) = &stage.name {
            names.push(n);
        }
    }
    for image in external {
        if names.iter().any(|n| n.eq_ignore_ascii_case(image)) {
            continue; // an earlier stage, not an image
        }
        let (_, tag, digest) = image_ref(image);
        assert!(
            tag.is_some() || digest.is_some(),
            "image {image:?} has no tag, which means `latest`"
        );
        assert_ne!(tag, Some("latest"), "image {image:?} uses the `latest` tag");
    }
}

#[test]
fn build_stage_is_official_rust_bookworm_at_least_the_msrv() {
    let stages = dockerfile();
    let build = &stages[0];
    let (repo, tag, _) = image_ref(&build.image);
    assert!(
        repo == "rust" || repo == "docker.io/library/rust",
        "the build stage must use the official rust image, got {:?}",
        build.image
    );
    let tag = tag.expect("the rust image must be tagged");
    let version = tag
        .strip_suffix("-bookworm")
        .unwrap_or_else(|| panic!("the rust image must be the bookworm variant, got tag {tag:?}"));
    let parse = |v: &str| -> Vec<u32> {
        v.split('.')
            .map(|p| p.parse().unwrap_or_else(|_| panic!("bad version {v:?}")))
            .collect()
    };
    let msrv = env!("CARGO_PKG_RUST_VERSION");
    assert!(
        parse(version) >= parse(msrv),
        "rust image {version} is older than the crate's rust-version {msrv}"
    );
}

#[test]
fn build_stage_cross_compiles_a_static_musl_binary_for_both_platforms_without_openssl() {
    let text = read("Dockerfile");
    assert!(
        text.contains("FROM --platform=$BUILDPLATFORM rust:"),
        "the build stage runs natively and cross-compiles (no emulation)"
    );
    let stages = dockerfile();
    let build = &stages[0];
    assert!(
        all(build, "ARG").contains(&"TARGETARCH"),
        "the build stage reads TARGETARCH"
    );
    let runs = all(build, "RUN").join("\n");
    for (arch, target) in MUSL {
        assert!(
            runs.contains("rustup target add") && runs.contains(target),
            "the build stage must add the {target} target"
        );
        assert!(
            runs.contains(&format!("{arch}) target={target}")),
            "TARGETARCH {arch} must build {target}"
        );
    }
    for compiler in ["musl-tools", "gcc-aarch64-linux-gnu"] {
        assert!(
            runs.contains(compiler),
            "ring needs a C compiler for each target: install {compiler}"
        );
    }
    let env = all(build, "ENV").join(" ");
    assert!(
        env.contains("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc"),
        "{env}"
    );
    let cargo = all(build, "RUN")
        .into_iter()
        .find(|r| r.contains("cargo build"))
        .expect("the build stage must run `cargo build`");
    for flag in ["--release", "--locked", "--target \"$target\""] {
        assert!(
            cargo.contains(flag),
            "`cargo build` must use {flag}: {cargo}"
        );
    }
    assert!(
        cargo.contains("NEEDED"),
        "the build checks the binary is static"
    );
    for ssl in ["libssl", "openssl"] {
        assert!(
            !runs.to_ascii_lowercase().contains(ssl),
            "the build must not need OpenSSL (TLS is rustls + ring), found {ssl:?}"
        );
    }
}

#[test]
fn final_stage_is_distroless_static_and_non_root() {
    let stages = dockerfile();
    let last = stages.last().expect("stages");
    assert_eq!(
        last.image, "gcr.io/distroless/static-debian12:nonroot",
        "the final stage must be distroless static (the binary is static)"
    );
    let user = *all(last, "USER")
        .last()
        .expect("the final stage must set USER");
    let (uid, gid) = user.split_once(':').unwrap_or((user, ""));
    for id in [uid, gid].into_iter().filter(|s| !s.is_empty()) {
        assert!(
            id != "root" && id.parse::<u32>().is_ok_and(|n| n != 0),
            "the final stage must run as a numeric non-root user, got USER {user}"
        );
    }
    assert_eq!(user, "65532:65532", "distroless `nonroot` is 65532:65532");
}

#[test]
fn final_stage_copies_the_musl_binary_and_runs_it() {
    let stages = dockerfile();
    let last = stages.last().expect("stages");
    let build_name = stages[0]
        .name
        .as_deref()
        .expect("the build stage must be named");
    let bin = env!("CARGO_PKG_NAME");
    let copies = all(last, "COPY");
    let expected_src = format!("/out/{bin}");
    assert!(
        copies.iter().any(|c| {
            let words: Vec<&str> = c.split_whitespace().collect();
            words.contains(&format!("--from={build_name}").as_str())
                && words.len() >= 3
                && words[words.len() - 2].ends_with(&expected_src)
                && words[words.len() - 1] == BIN_PATH
        }),
        "the final stage must COPY --from={build_name} …/{expected_src} {BIN_PATH}; got {copies:?}"
    );
    let entrypoints = all(last, "ENTRYPOINT");
    let entrypoint = *entrypoints
        .last()
        .expect("the final stage must set ENTRYPOINT");
    let argv: Vec<String> = serde_json::from_str(entrypoint).unwrap_or_else(|e| {
        panic!("ENTRYPOINT must be exec form (a JSON array; there is no shell): {entrypoint}: {e}")
    });
    assert_eq!(argv, [BIN_PATH], "ENTRYPOINT must run {BIN_PATH}");
}

#[test]
fn dockerignore_keeps_build_output_cluster_state_and_git_out() {
    let text = read(".dockerignore");
    let entries: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/'))
        .collect();
    for needed in ["target", ".cluster", ".git"] {
        assert!(
            entries.contains(&needed),
            ".dockerignore must exclude {needed}/, has {entries:?}"
        );
    }
}

/// The build stage copies the whole context, and cargo loads every workspace member's manifest
/// even for `--bin kubectl-hsd`: a member left out of the context fails the image build.
#[test]
fn dockerignore_keeps_every_workspace_member_in_the_context() {
    let manifest = read("Cargo.toml");
    let members_line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("Cargo.toml declares its workspace members");
    let members: Vec<&str> = members_line.split('"').skip(1).step_by(2).collect();
    assert!(!members.is_empty(), "no member in {members_line:?}");
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_matches('/').to_string())
        .collect();
    for member in members {
        assert!(
            !ignored
                .iter()
                .any(|i| i == member || member.starts_with(&format!("{i}/"))),
            ".dockerignore excludes workspace member {member}/: the image build would fail"
        );
    }
}

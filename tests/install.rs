//! `install.sh` into a temporary prefix with the binary this test run built: everything lands
//! where shells and man look, a second run changes nothing, and `--uninstall` removes it all.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_chordctl");

/// What install.sh puts under the prefix, and where the repository keeps each (None: the
/// binary itself).
const FILES: &[(&str, Option<&str>)] = &[
    ("bin/chordctl", None),
    (
        "share/bash-completion/completions/chordctl",
        Some("completions/chordctl.bash"),
    ),
    (
        "share/zsh/site-functions/_chordctl",
        Some("completions/_chordctl"),
    ),
    (
        "share/fish/vendor_completions.d/chordctl.fish",
        Some("completions/chordctl.fish"),
    ),
    ("share/man/man1/chordctl.1", Some("man/chordctl.1")),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn install(prefix: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("install.sh"))
        .arg("--prefix")
        .arg(prefix)
        .args(["--binary", BIN])
        .args(extra);
    let line = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {line}: {e}"));
    assert!(
        out.status.success(),
        "{line}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn install_sh_installs_again_and_uninstalls() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // A prefix that does not exist yet, as `--prefix ~/.local` on a fresh account.
    let prefix = tmp.path().join("opt/chordctl");

    for round in 0..2 {
        let out = install(&prefix, &[]);
        let said = String::from_utf8_lossy(&out.stdout);
        for (file, repo) in FILES {
            let path = prefix.join(file);
            assert!(
                said.contains(&path.display().to_string()),
                "round {round}: {said}"
            );
            match repo {
                None => assert_eq!(read(&path), read(Path::new(BIN)), "{file}"),
                Some(repo) => assert_eq!(read(&path), read(&root().join(repo)), "{file}"),
            }
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(prefix.join("bin/chordctl"))
                .unwrap_or_else(|e| panic!("{e}"))
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o755);
        }
        assert!(
            said.contains(concat!("chordctl ", env!("CARGO_PKG_VERSION"))),
            "{said}"
        );
    }

    let version = Command::new(prefix.join("bin/chordctl"))
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("installed chordctl: {e}"));
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        concat!("chordctl ", env!("CARGO_PKG_VERSION"))
    );

    let out = install(&prefix, &["--uninstall"]);
    let said = String::from_utf8_lossy(&out.stdout);
    for (file, _) in FILES {
        let path = prefix.join(file);
        assert!(!path.exists(), "{} is still there", path.display());
        assert!(
            said.contains(&format!("removed {}", path.display())),
            "{said}"
        );
    }
    // Uninstalling again is not an error.
    install(&prefix, &["--uninstall"]);
}

/// Without `--binary`, install.sh builds with cargo and installs what cargo built, also when
/// `CARGO_TARGET_DIR` puts it elsewhere than `target/`. (A stand-in `cargo` on PATH "builds"
/// by copying this test run's binary where the real one would put it.)
#[test]
fn install_sh_finds_what_cargo_built_under_cargo_target_dir() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bin_dir = tmp.path().join("fake-bin");
    std::fs::create_dir_all(&bin_dir).unwrap_or_else(|e| panic!("{e}"));
    let cargo = bin_dir.join("cargo");
    std::fs::write(
        &cargo,
        format!(
            "#!/bin/sh\nset -e\nmkdir -p \"$CARGO_TARGET_DIR/release\"\ncp '{BIN}' \"$CARGO_TARGET_DIR/release/chordctl\"\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&cargo, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    let target = tmp.path().join("elsewhere");
    let prefix = tmp.path().join("prefix");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(root().join("install.sh"))
        .arg("--prefix")
        .arg(&prefix)
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap_or_else(|e| panic!("cannot run install.sh: {e}"));
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(&prefix.join("bin/chordctl")), read(Path::new(BIN)));
}

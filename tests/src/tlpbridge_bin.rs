//! Finding an up-to-date `tlpbridge` binary from tests outside the `bridge` package.
//!
//! `env!("CARGO_BIN_EXE_tlpbridge")` exists only in the `bridge` package's own tests, and
//! `cargo test` builds a package's plain binary only when that package has integration tests. So
//! the first call runs `cargo build -p bridge --bin tlpbridge` into the same target directory and
//! profile as the running test executable (a no-op when the binary is fresh) and takes the path
//! cargo reports. `TLPBRIDGE_BIN` overrides all of this with a prebuilt binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::HarnessError;
use crate::process::run_bounded;

/// A cold build of the bridge on 2 cores, with margin.
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The path found by the first successful call; later calls reuse it.
static TLPBRIDGE_BIN: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The `tlpbridge` binary: `$TLPBRIDGE_BIN` if set, else built (if needed) by cargo into the
/// target directory and profile of the running test executable.
pub fn tlpbridge_bin() -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os("TLPBRIDGE_BIN").filter(|value| !value.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(HarnessError::BadOverride { env_var: "TLPBRIDGE_BIN", path });
        }
        return Ok(path);
    }
    // Serialises concurrent tests so only one runs cargo; a panic elsewhere poisoning the lock
    // does not make the cached path wrong.
    let mut cached = TLPBRIDGE_BIN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(path) = cached.as_ref() {
        return Ok(path.clone());
    }
    let path = build_tlpbridge()?;
    *cached = Some(path.clone());
    Ok(path)
}

/// `<target>/<profile dir>/deps/<test exe>` → (`<target>`, cargo's profile argument).
fn target_dir_and_profile(exe: &Path) -> Result<(PathBuf, String), HarnessError> {
    let fail = |reason: &str| HarnessError::TargetDir { exe: exe.to_owned(), reason: reason.to_owned() };
    let deps = exe.parent().ok_or_else(|| fail("it has no parent directory"))?;
    if deps.file_name().is_none_or(|name| name != "deps") {
        return Err(fail("it is not in a `deps` directory; set TLPBRIDGE_BIN"));
    }
    let profile_dir = deps.parent().ok_or_else(|| fail("`deps` has no parent directory"))?;
    let profile_name = profile_dir
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| fail("the profile directory name is not UTF-8"))?;
    let target = profile_dir.parent().ok_or_else(|| fail("the profile directory has no parent"))?;
    // The `dev` and `test` profiles build into `debug`, `release` and `bench` into `release`.
    let profile = if profile_name == "debug" { "dev" } else { profile_name };
    Ok((target.to_owned(), profile.to_owned()))
}

fn build_tlpbridge() -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe().map_err(|source| HarnessError::TargetDir {
        exe: PathBuf::from("<current_exe>"),
        reason: source.to_string(),
    })?;
    let (target_dir, profile) = target_dir_and_profile(&exe)?;
    // Cargo sets CARGO_MANIFEST_DIR when it runs the test too; prefer that to the compile-time
    // value, which names wherever this library happened to be compiled from.
    let package_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let workspace_manifest = package_dir.join("../Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--manifest-path")
        .arg(&workspace_manifest)
        .args(["-p", "bridge", "--bin", "tlpbridge", "--profile", &profile])
        .arg("--target-dir")
        .arg(&target_dir)
        .args(["--message-format", "json-render-diagnostics"]);
    let what = format!("cargo build -p bridge --bin tlpbridge --profile {profile}");
    let out = run_bounded(command, &what, BUILD_TIMEOUT)?;
    if !out.status.success() {
        return Err(HarnessError::CommandFailed { what, status: out.status, output: out.output });
    }
    executable_from_messages(&out.output).ok_or(HarnessError::NoBridgeExecutable { output: out.output })
}

/// The `executable` of the `tlpbridge` bin artifact in cargo's JSON messages.
fn executable_from_messages(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["target"]["name"] == "tlpbridge")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_dirs_map_to_cargo_profiles() {
        let (target, profile) =
            target_dir_and_profile(Path::new("/w/target/debug/deps/peers_smoke-0123")).unwrap();
        assert_eq!(target, Path::new("/w/target"));
        assert_eq!(profile, "dev");
        let (_, profile) = target_dir_and_profile(Path::new("/t/release/deps/peers_smoke-0123")).unwrap();
        assert_eq!(profile, "release");
        assert!(target_dir_and_profile(Path::new("/usr/bin/peers_smoke")).is_err());
    }

    #[test]
    fn finds_the_bin_artifact_among_messages() {
        let messages = concat!(
            "{\"reason\":\"compiler-artifact\",\"target\":{\"name\":\"bridge\",\"kind\":[\"lib\"]},",
            "\"executable\":null}\n",
            "not json\n",
            "{\"reason\":\"compiler-artifact\",\"target\":{\"name\":\"tlpbridge\",\"kind\":[\"bin\"]},",
            "\"executable\":\"/w/target/debug/tlpbridge\"}\n",
            "{\"reason\":\"build-finished\",\"success\":true}\n",
        );
        assert_eq!(executable_from_messages(messages), Some(PathBuf::from("/w/target/debug/tlpbridge")));
        assert_eq!(executable_from_messages("{\"reason\":\"build-finished\"}"), None);
    }
}

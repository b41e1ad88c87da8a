//! One finished run of the `chordctl` binary, with assertions that print the whole run (the
//! command, its status, stdout and stderr) when they fail. Shared by the client tests against
//! a fake agent (tests/cli.rs) and against real agents (tests/e2e.rs).

use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub struct Run {
    /// The command as run, for failure messages.
    pub line: String,
    pub output: Output,
}

impl Run {
    /// Run `cmd` to completion with no input.
    pub fn of(mut cmd: Command) -> Run {
        let line = format!("{cmd:?}");
        let output = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {line}: {e}"));
        Run { line, output }
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn code_of(&self) -> Option<i32> {
        self.output.status.code()
    }

    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.line,
            self.output.status,
            self.stdout(),
            self.stderr()
        )
    }

    /// Asserts the exit code and returns `self` for more checks.
    pub fn code(&self, expected: i32) -> &Run {
        assert_eq!(
            self.code_of(),
            Some(expected),
            "wrong exit code\n{}",
            self.describe()
        );
        self
    }

    pub fn stdout_has(&self, part: &str) -> &Run {
        assert!(
            self.stdout().contains(part),
            "stdout lacks {part:?}\n{}",
            self.describe()
        );
        self
    }

    pub fn stdout_lacks(&self, part: &str) -> &Run {
        assert!(
            !self.stdout().contains(part),
            "stdout has {part:?}\n{}",
            self.describe()
        );
        self
    }

    pub fn stderr_has(&self, part: &str) -> &Run {
        assert!(
            self.stderr().contains(part),
            "stderr lacks {part:?}\n{}",
            self.describe()
        );
        self
    }

    /// Stdout parsed as JSON (whatever the exit code: errors can be JSON too).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.output.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", self.describe()))
    }

    /// Exit 0 and stdout parsed as JSON.
    pub fn ok_json(&self) -> Value {
        self.code(0);
        self.json()
    }

    /// A failed assertion about the output, with the whole run.
    pub fn check(&self, ok: bool, what: &str) {
        assert!(ok, "{what}\n{}", self.describe());
    }
}

//! systemctl, as keel-bootstrap runs it on a running node: one command,
//! bounded in time, its failure named.

use std::time::Duration;

use super::NodeError;

/// Runs `command` (`systemctl <verb> <unit>...`, split at spaces) and
/// waits at most `limit` for it: systemctl waits for the job it queues,
/// and a unit that hangs on its way up or down would hold keel-bootstrap
/// with it. Past the limit systemctl is killed (the job goes on in
/// systemd) and the error names the command.
pub async fn run(command: &'static str, limit: Duration) -> Result<(), NodeError> {
    let mut words = command.split(' ');
    let mut cmd = tokio::process::Command::new(words.next().unwrap_or_default());
    cmd.args(words).kill_on_drop(true);
    let status = tokio::time::timeout(limit, cmd.status())
        .await
        .map_err(|_| NodeError::Timeout { command, after: limit })?
        .map_err(|source| NodeError::Run { command, source })?;
    if status.success() {
        Ok(())
    } else {
        Err(NodeError::Exit { command, status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The helper runs whatever program the command names: `sleep` and
    // `false` stand in for a systemctl that hangs or fails.

    #[tokio::test]
    async fn a_command_past_its_limit_is_named() {
        let e = run("sleep 5", Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(e, NodeError::Timeout { command: "sleep 5", .. }), "{e:?}");
    }

    #[tokio::test]
    async fn a_failing_command_is_named_with_its_status() {
        let e = run("false", Duration::from_secs(10)).await.unwrap_err();
        assert!(matches!(e, NodeError::Exit { command: "false", .. }), "{e:?}");
        run("true", Duration::from_secs(10)).await.unwrap();
    }
}

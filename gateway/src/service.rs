//! `meshgate service install|uninstall`: run meshgate under the system's service
//! manager — a systemd unit on Linux, a launchd job on macOS — so it starts at boot or
//! login, restarts on failure, and reloads its config on `systemctl reload`.
//!
//! The unit is hardened only in ways that keep SSH working: the process must read the
//! user's `~/.ssh` (config, keys), write `known_hosts` (accept-new) and reach the
//! ssh-agent's socket, which often lives under `/tmp` — so no `PrivateTmp`, and the home
//! directory stays visible.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the service runs: the user's own manager (no root needed; runs while the user
/// is logged in, or always with `loginctl enable-linger`) or the system's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    User,
    System,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    Systemd,
    Launchd,
}

impl Manager {
    /// This platform's manager.
    pub fn native() -> Self {
        if cfg!(target_os = "macos") {
            Manager::Launchd
        } else {
            Manager::Systemd
        }
    }
}

/// What the service runs.
#[derive(Debug, Clone)]
pub struct Service {
    pub scope: Scope,
    pub manager: Manager,
    /// The meshgate binary (absolute).
    pub exe: PathBuf,
    /// The config file (absolute).
    pub config: PathBuf,
    /// The account a system service runs as: the one whose ~/.ssh names the nodes.
    pub user: String,
    /// The ssh-agent socket at install time, if any.
    pub agent: Option<PathBuf>,
}

const LABEL: &str = "dev.meshgate";
const UNIT: &str = "meshgate.service";

impl Service {
    /// Where the unit or plist goes.
    pub fn path(&self) -> PathBuf {
        let home = meshgate_transports::ssh::config::home_dir();
        match (self.manager, self.scope) {
            (Manager::Systemd, Scope::User) => std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .unwrap_or_else(|| home.join(".config"))
                .join("systemd/user")
                .join(UNIT),
            (Manager::Systemd, Scope::System) => Path::new("/etc/systemd/system").join(UNIT),
            (Manager::Launchd, Scope::User) => home
                .join("Library/LaunchAgents")
                .join(format!("{LABEL}.plist")),
            (Manager::Launchd, Scope::System) => {
                Path::new("/Library/LaunchDaemons").join(format!("{LABEL}.plist"))
            }
        }
    }

    /// The unit or plist text.
    pub fn render(&self) -> String {
        match self.manager {
            Manager::Systemd => self.systemd_unit(),
            Manager::Launchd => self.launchd_plist(),
        }
    }

    fn systemd_unit(&self) -> String {
        let mut unit = String::new();
        let exec = format!(
            "{} serve --config {}",
            systemd_quote(&self.exe),
            systemd_quote(&self.config)
        );
        let _ = write!(
            unit,
            "[Unit]\n\
             Description=meshgate: one OpenAI-compatible endpoint for the LLM servers on your machines\n\
             Wants=network-online.target\n\
             After=network-online.target\n\
             \n\
             [Service]\n\
             Type=exec\n\
             ExecStart={exec}\n\
             # Re-reads meshgate.toml and the ssh config without dropping requests.\n\
             ExecReload=/bin/kill -HUP $MAINPID\n\
             Restart=on-failure\n\
             RestartSec=2s\n\
             # SIGTERM drains: open requests and streams get [server] drain_timeout.\n\
             TimeoutStopSec=60s\n"
        );
        if self.scope == Scope::System {
            // ~/.ssh (config, keys, known_hosts) is this account's.
            let _ = writeln!(unit, "User={}", self.user);
        }
        match &self.agent {
            // A socket under /tmp is made anew at each login: a fixed path would go stale.
            Some(agent) if !agent.starts_with("/tmp") => {
                let _ = writeln!(unit, "Environment=SSH_AUTH_SOCK={}", agent.display());
            }
            _ => unit.push_str(
                "# An ssh-agent at a fixed path, if you use one (keys in IdentityFile work without):\n\
                 # Environment=SSH_AUTH_SOCK=%t/ssh-agent.socket\n",
            ),
        }
        unit.push_str(
            "# Hardening that keeps SSH working: no PrivateTmp (agent sockets live in /tmp),\n\
             # the home directory visible (~/.ssh), known_hosts writable (accept-new).\n\
             NoNewPrivileges=yes\n\
             LockPersonality=yes\n\
             RestrictRealtime=yes\n\
             SystemCallArchitectures=native\n",
        );
        if self.scope == Scope::System {
            unit.push_str(
                "ProtectSystem=strict\n\
                 ReadWritePaths=-%h/.ssh\n\
                 ProtectKernelTunables=yes\n\
                 ProtectKernelModules=yes\n\
                 ProtectControlGroups=yes\n\
                 RestrictSUIDSGID=yes\n\
                 RestrictNamespaces=yes\n\
                 MemoryDenyWriteExecute=yes\n\
                 RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n\
                 CapabilityBoundingSet=\n",
            );
        }
        let target = match self.scope {
            Scope::User => "default.target",
            Scope::System => "multi-user.target",
        };
        let _ = write!(unit, "\n[Install]\nWantedBy={target}\n");
        unit
    }

    fn launchd_plist(&self) -> String {
        let log = match self.scope {
            Scope::User => {
                meshgate_transports::ssh::config::home_dir().join("Library/Logs/meshgate.log")
            }
            Scope::System => PathBuf::from("/var/log/meshgate.log"),
        };
        let mut args = String::new();
        for arg in [
            self.exe.display().to_string(),
            "serve".into(),
            "--config".into(),
            self.config.display().to_string(),
        ] {
            let _ = writeln!(args, "    <string>{}</string>", xml_escape(&arg));
        }
        let user = match self.scope {
            Scope::System => format!(
                "  <key>UserName</key>\n  <string>{}</string>\n",
                xml_escape(&self.user)
            ),
            Scope::User => String::new(),
        };
        let log = xml_escape(&log.display().to_string());
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
             <plist version=\"1.0\">\n\
             <dict>\n\
             \x20 <key>Label</key>\n  <string>{LABEL}</string>\n\
             \x20 <key>ProgramArguments</key>\n  <array>\n{args}  </array>\n\
             {user}\
             \x20 <key>RunAtLoad</key>\n  <true/>\n\
             \x20 <!-- Restarted whenever it exits other than cleanly. -->\n\
             \x20 <key>KeepAlive</key>\n  <dict>\n    <key>SuccessfulExit</key>\n    <false/>\n  </dict>\n\
             \x20 <key>ThrottleInterval</key>\n  <integer>5</integer>\n\
             \x20 <!-- SIGTERM drains; give open streams time. -->\n\
             \x20 <key>ExitTimeOut</key>\n  <integer>60</integer>\n\
             \x20 <key>StandardOutPath</key>\n  <string>{log}</string>\n\
             \x20 <key>StandardErrorPath</key>\n  <string>{log}</string>\n\
             </dict>\n\
             </plist>\n"
        )
    }

    /// The manager commands that start (`install`) or stop (`uninstall`) the service.
    fn commands(&self, install: bool) -> Vec<Vec<String>> {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let path = self.path().display().to_string();
        match self.manager {
            Manager::Systemd => {
                let mut base = s(&["systemctl"]);
                if self.scope == Scope::User {
                    base.push("--user".into());
                }
                let with = |more: &[&str]| [base.clone(), s(more)].concat();
                if install {
                    vec![with(&["daemon-reload"]), with(&["enable", "--now", UNIT])]
                } else {
                    vec![with(&["disable", "--now", UNIT]), with(&["daemon-reload"])]
                }
            }
            Manager::Launchd => {
                let domain = match self.scope {
                    Scope::User => format!("gui/{}", current_uid()),
                    Scope::System => "system".into(),
                };
                if install {
                    vec![s(&["launchctl", "bootstrap", &domain, &path])]
                } else {
                    vec![s(&["launchctl", "bootout", &format!("{domain}/{LABEL}")])]
                }
            }
        }
    }

    /// Write the unit and start it. Returns what was done; an error says what to run
    /// by hand when the manager could not be reached (the file is in place then).
    pub fn install(&self) -> Result<String, String> {
        let path = self.path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        std::fs::write(&path, self.render())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let wrote = format!("wrote {}", path.display());
        run_all(&self.commands(true))
            .map(|done| {
                format!(
                    "{wrote}\n{done}started; reload with `{}`",
                    self.reload_hint()
                )
            })
            .map_err(|e| format!("{wrote}, but {e}"))
    }

    /// Stop the service and remove its unit.
    pub fn uninstall(&self) -> Result<String, String> {
        let path = self.path();
        // Stopping fails when it is not running or not known: removing the file still
        // uninstalls it.
        let stopped = run_all(&self.commands(false));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!("{} is not installed", path.display()));
            }
            Err(e) => return Err(format!("cannot remove {}: {e}", path.display())),
        }
        let note = stopped.err().map(|e| format!(" ({e})")).unwrap_or_default();
        Ok(format!("removed {}{note}", path.display()))
    }

    fn reload_hint(&self) -> String {
        match (self.manager, self.scope) {
            (Manager::Systemd, Scope::User) => "systemctl --user reload meshgate".into(),
            (Manager::Systemd, Scope::System) => "systemctl reload meshgate".into(),
            (Manager::Launchd, _) => format!("launchctl kill HUP <domain>/{LABEL}"),
        }
    }
}

fn run_all(commands: &[Vec<String>]) -> Result<String, String> {
    let mut done = String::new();
    for command in commands {
        let shown = command.join(" ");
        let output = Command::new(&command[0])
            .args(&command[1..])
            .output()
            .map_err(|e| {
                format!(
                    "`{shown}` could not run ({e}); run by hand:\n  {}",
                    manual(commands)
                )
            })?;
        if !output.status.success() {
            return Err(format!(
                "`{shown}` failed: {}\nrun by hand:\n  {}",
                String::from_utf8_lossy(&output.stderr).trim(),
                manual(commands)
            ));
        }
        let _ = writeln!(done, "ran `{shown}`");
    }
    Ok(done)
}

fn manual(commands: &[Vec<String>]) -> String {
    commands
        .iter()
        .map(|c| c.join(" "))
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// systemd's command-line quoting: double quotes when there is anything to protect.
fn systemd_quote(path: &Path) -> String {
    let text = path.display().to_string();
    if text.contains(|c: char| c.is_whitespace() || "\"'\\$%;".contains(c)) {
        let escaped = text
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('$', "$$")
            .replace('%', "%%");
        format!("\"{escaped}\"")
    } else {
        text
    }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn current_uid() -> String {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "501".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(manager: Manager, scope: Scope) -> Service {
        Service {
            scope,
            manager,
            exe: "/opt/mesh gate/meshgate".into(),
            config: "/etc/meshgate/meshgate.toml".into(),
            user: "ada".into(),
            agent: Some("/tmp/ssh-x/agent.1".into()),
        }
    }

    #[test]
    fn units_quote_paths_and_keep_ssh_working() {
        let unit = service(Manager::Systemd, Scope::System).render();
        assert!(unit.contains(
            "ExecStart=\"/opt/mesh gate/meshgate\" serve --config /etc/meshgate/meshgate.toml"
        ));
        assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
        assert!(unit.contains("User=ada") && unit.contains("ReadWritePaths=-%h/.ssh"));
        let settings: Vec<&str> = unit.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(
            !settings
                .iter()
                .any(|l| l.starts_with("PrivateTmp") || l.starts_with("ProtectHome"))
        );
        assert!(unit.contains("# Environment=SSH_AUTH_SOCK"));
        let plist = service(Manager::Launchd, Scope::User).render();
        assert!(plist.contains("<string>/opt/mesh gate/meshgate</string>"));
        assert!(plist.contains("<key>KeepAlive</key>") && plist.contains("<key>RunAtLoad</key>"));
    }
}

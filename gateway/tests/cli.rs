//! The `meshgate` command as an operator runs it: check, a bad config, the demo.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::bin::*;
use common::*;
use meshgate_transports::ssh::testing::descendants;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_each_node_and_fails_only_when_none_is_usable() {
    let a = sim("alive", &["llama3.2", "qwen2.5"]).await;
    let dead = free_port();
    let config = TempConfig::new(&format!(
        "[[nodes]]\nname = \"alive\"\nurl = \"{}\"\n[[nodes]]\nname = \"gone\"\nurl = \"http://127.0.0.1:{dead}\"\n",
        a.url()
    ));
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config.0)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let alive = stdout
        .lines()
        .find(|l| l.starts_with("alive"))
        .expect(&stdout);
    assert!(
        alive.contains("ok") && alive.contains("llama3.2, qwen2.5"),
        "{alive}"
    );
    let gone = stdout
        .lines()
        .find(|l| l.starts_with("gone"))
        .expect(&stdout);
    assert!(
        gone.contains("FAILED") && gone.contains("refused"),
        "{gone}"
    );
    assert!(stdout.contains("1 of 2 nodes usable"), "{stdout}");

    let config = TempConfig::new(&format!(
        "[[nodes]]\nname = \"gone\"\nurl = \"http://127.0.0.1:{dead}\"\n"
    ));
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config.0)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn a_bad_config_names_the_key_and_exits_non_zero() {
    for (text, key) in [
        ("[[nodes]]\nname = \"a\"\n", "nodes[0].url"),
        (
            "[server]\nlisten = \"127.0.0.1:8080\"\nworkers = 4\n",
            "workers",
        ),
    ] {
        let config = TempConfig::new(text);
        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config.0)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{stderr}");
    }
    let out = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/meshgate.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/meshgate.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_streams_a_reply_and_serves_the_mesh() {
    let mut child = Running(
        Command::new(BIN)
            .args(["demo", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut url = None;
    let mut served = false;
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(30)) {
        if let Some(rest) = line.strip_prefix("meshgate demo listening on ") {
            url = Some(rest.trim().to_owned());
        }
        if line.contains("(served by node") {
            served = true;
        }
        if line.contains("Ctrl-C to stop") {
            break;
        }
    }
    let url = url.expect("the demo prints its address");
    assert!(served, "the demo's own streaming check did not complete");
    let models = get(&format!("{url}/v1/models")).await.json();
    assert_eq!(models["data"].as_array().unwrap().len(), 3, "{models}");
    let reply = post(
        &format!("{url}/v1/chat/completions"),
        chat_body("mistral", false),
    )
    .await;
    assert_eq!(reply.status, http::StatusCode::OK);
    assert_eq!(reply.headers["x-meshgate-node"], "runpod");
    // Stopped as an operator stops it (SIGTERM, like Ctrl-C), the demo takes down what it
    // started: its throwaway sshd must not outlive it.
    let started = descendants(child.id());
    terminate(&mut child).await;
    let mut left = started.clone();
    for _ in 0..100 {
        left.retain(|&pid| alive(pid));
        if left.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the demo left processes running: {left:?}");
}

/// Whether `pid` is a live process (not gone, not a zombie waiting to be reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_owned();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_can_come_from_the_environment() {
    let node = sim("a", &["llama3.2"]).await;
    let port = free_port();
    let config = TempConfig::new(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[[keys]]\nname = \"env\"\nkey_env = \"MESHGATE_TEST_KEY\"\n\
         [[nodes]]\nname = \"a\"\nurl = \"{}\"\n",
        node.url()
    ));
    let child = Running(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config.0)
            .env("MESHGATE_TEST_KEY", "sk-from-env")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base).await;
    let call = |key: &'static str| {
        let request = http::Request::post(format!("{base}/v1/chat/completions"))
            .header("authorization", format!("Bearer {key}"))
            .body(http_body_util::Full::new(bytes::Bytes::from(chat_body(
                "llama3.2", false,
            ))))
            .unwrap();
        client().request(request)
    };
    assert_eq!(call("sk-from-env").await.unwrap().status(), 200);
    assert_eq!(call("sk-other").await.unwrap().status(), 401);
    drop(child);
}

/// Serve with `args` until ready, stop with SIGTERM, and return what it logged.
async fn logs_of_a_serve_run(args: &[&str]) -> String {
    let node = sim("a", &["llama3.2"]).await;
    let port = free_port();
    let config = TempConfig::new(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[[nodes]]\nname = \"a\"\nurl = \"{}\"\n",
        node.url()
    ));
    let mut child = spawn_serve(&config, args, Stdio::piped());
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base).await;
    terminate(&mut child).await;
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logs).unwrap();
    logs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_plain_text_off_a_terminal_and_json_on_request() {
    let text = logs_of_a_serve_run(&[]).await;
    assert!(text.contains("meshgate serving"), "{text}");
    assert!(text.contains("shutting down"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in logs that go to a pipe: {text:?}"
    );

    let json = logs_of_a_serve_run(&["--log-format", "json"]).await;
    let lines: Vec<serde_json::Value> = json
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    assert!(messages.contains(&"meshgate serving"), "{json}");
    assert!(lines.iter().all(|l| l["level"].is_string()), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_twenty_open_streams_finish_then_exits_zero() {
    // 20 tokens 60 ms apart: each stream is open for more than a second.
    let node = Sim::start(SimConfig {
        tokens: 20,
        token_delay: Duration::from_millis(60),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let port = free_port();
    let config = TempConfig::new(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndrain_timeout = \"20s\"\n\
         [[nodes]]\nname = \"a\"\nurl = \"{}\"\n",
        node.url()
    ));
    let (mut child, base) = serve(&config, port).await;
    let url = format!("{base}/v1/chat/completions");
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut stream = EventStream::open(&url, chat_body("llama3.2", true)).await;
        stream.next().await.expect("the stream started");
        streams.push(stream);
    }
    signal(&child, "TERM");
    // Draining: no new connections are taken...
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "still accepting after SIGTERM"
    );
    // ...and every open stream runs to its end.
    for stream in streams {
        let events = stream.collect().await;
        assert_eq!(
            events.last().map(String::as_str),
            Some("[DONE]"),
            "{events:?}"
        );
    }
    let mut exited = None;
    for _ in 0..250 {
        exited = child.try_wait().unwrap();
        if exited.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exited = exited.expect("exits once the streams are done");
    assert!(exited.success(), "{exited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_toml_is_rejected_while_running_and_a_sighup_storm_is_harmless() {
    let a = sim("a", &["llama3.2"]).await;
    let b = sim("b", &["qwen2.5"]).await;
    let port = free_port();
    let text = |nodes: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[discovery]\ninterval = \"200ms\"\n{nodes}"
        )
    };
    let node =
        |name: &str, sim: &Sim| format!("[[nodes]]\nname = \"{name}\"\nurl = \"{}\"\n", sim.url());
    let config = TempConfig::new(&text(&node("a", &a)));
    let (mut child, base) = serve(&config, port).await;
    let chat = format!("{base}/v1/chat/completions");
    let status = || async { get(&format!("{base}/status.json")).await.json() };

    // Edited into invalid TOML while running: refused with the reason, still serving.
    std::fs::write(&config.0, text(&node("a", &a)) + "[[nodes]\nname = \n").unwrap();
    let mut shown = String::new();
    for _ in 0..100 {
        shown = status().await["config"]["last_error"]["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if !shown.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        shown.contains(&config.0.display().to_string()) && shown.contains("line"),
        "the reason names the file and the place: {shown:?}"
    );
    assert_eq!(post(&chat, chat_body("llama3.2", false)).await.status, 200);

    // A SIGHUP storm: at most a few reloads, no failed request, still running.
    std::fs::write(&config.0, text(&(node("a", &a) + &node("b", &b)))).unwrap();
    for _ in 0..50 {
        signal(&child, "HUP");
    }
    for _ in 0..20 {
        assert_eq!(post(&chat, chat_body("llama3.2", false)).await.status, 200);
    }
    let mut served_b = false;
    for _ in 0..100 {
        if post(&chat, chat_body("qwen2.5", false)).await.status == 200 {
            served_b = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served_b, "the fixed config was taken");
    let after = status().await;
    let reloads = after["config"]["reloads"].as_u64().unwrap();
    assert!(
        (1..=10).contains(&reloads),
        "{reloads} reloads for 50 SIGHUPs"
    );
    assert!(after["config"]["last_error"].is_null(), "{after}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop meshgate"
    );
    terminate(&mut child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_units_are_valid_for_systemd_and_launchd() {
    let node = sim("a", &["llama3.2"]).await;
    let config = TempConfig::new(&format!(
        "[[nodes]]\nname = \"a\"\nurl = \"{}\"\n",
        node.url()
    ));
    let print = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["service", "install", "--print", "--config"])
            .arg(&config.0)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let dir = meshgate_transports::ssh::testing::TempDir::new("meshgate-service");
    for scope in ["--user", "--system"] {
        let unit = print(&[scope, "--manager", "systemd"]);
        assert!(
            unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
            "{unit}"
        );
        assert!(unit.contains("Restart=on-failure"), "{unit}");
        let path = dir.path().join("meshgate.service");
        std::fs::write(&path, &unit).unwrap();
        match Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
        {
            Ok(out) => {
                // Only this unit's own problems count (the host's other units are not ours).
                let stderr = String::from_utf8_lossy(&out.stderr);
                let ours: Vec<&str> = stderr
                    .lines()
                    .filter(|l| l.contains("meshgate.service"))
                    .collect();
                assert!(
                    ours.is_empty(),
                    "{scope}: systemd-analyze verify: {stderr}\n{unit}"
                );
            }
            Err(_) => eprintln!("SKIP: systemd-analyze is not installed; unit not verified"),
        }

        let plist = print(&[scope, "--manager", "launchd"]);
        let path = dir.path().join("dev.meshgate.plist");
        std::fs::write(&path, &plist).unwrap();
        let check = Command::new("python3")
            .args([
                "-c",
                "import plistlib,sys; p=plistlib.load(open(sys.argv[1],'rb')); \
                 assert p['Label']=='dev.meshgate' and p['RunAtLoad'] and p['KeepAlive'] \
                 and p['ProgramArguments'][1:3]==['serve','--config'] and p['StandardErrorPath'], p",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}\n{plist}",
            String::from_utf8_lossy(&check.stderr)
        );
    }

    // A config that does not validate is refused before anything is installed.
    let bad = TempConfig::new("[server]\nlisten = \"nope\"\n");
    let out = Command::new(BIN)
        .args(["service", "install", "--user", "--print", "--config"])
        .arg(&bad.0)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen"));

    // Installed into the user's config directory, and removed again.
    let home = meshgate_transports::ssh::testing::TempDir::new("meshgate-service-home");
    let run = |action: &str| {
        let mut command = Command::new(BIN);
        command
            .args(["service", action, "--user", "--manager", "systemd"])
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join(".config"));
        if action == "install" {
            command.arg("--config").arg(&config.0);
        }
        command.output().unwrap()
    };
    let installed = run("install");
    let unit = home.path().join(".config/systemd/user/meshgate.service");
    assert!(
        unit.exists(),
        "{}",
        String::from_utf8_lossy(&installed.stderr)
    );
    // No user service manager in a test container: then it says what to run by hand.
    if !installed.status.success() {
        let said = String::from_utf8_lossy(&installed.stderr);
        assert!(
            said.contains("systemctl --user enable --now meshgate.service"),
            "{said}"
        );
    }
    let removed = run("uninstall");
    assert!(
        !unit.exists(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
}

//! The status page in a real browser: headless Chromium, driven through chromedriver's
//! W3C WebDriver HTTP API. A node killed while the page is open turns offline, with its
//! reason, without the page reloading. The screenshot is kept as
//! `<target>/status-page.png`.
//!
//! Needs Debian's `chromium` and `chromium-driver`; skipped (with a SKIPPED line) when
//! they are missing outside CI.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use common::*;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn browser_available() -> bool {
    if std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have chromium and chromium-driver (apt-get install chromium chromium-driver)"
    );
    eprintln!(
        "SKIPPED: chromium or chromedriver is not installed (apt-get install chromium chromium-driver)"
    );
    false
}

/// chromedriver on a free port, killed on drop with the Chromium it started (also when
/// the test fails before the session is deleted).
struct Driver {
    child: Option<bin::Running>,
    url: String,
    profile: std::path::PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        drop(self.child.take());
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Driver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = bin::Running(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
        );
        let profile =
            std::env::temp_dir().join(format!("meshgate-status-chromium-{}", std::process::id()));
        let driver = Self {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            profile,
        };
        for _ in 0..200 {
            let ready = client()
                .get(format!("{}/status", driver.url).parse().unwrap())
                .await
                .is_ok();
            if ready {
                return driver;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("chromedriver did not come up");
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let response = client()
            .request(request)
            .await
            .expect("chromedriver answers");
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {json}");
        json["value"].clone()
    }
}

struct Browser<'a> {
    driver: &'a Driver,
    session: String,
}

impl Browser<'_> {
    async fn run(&self, script: &str) -> Value {
        self.driver
            .call(
                "POST",
                &format!("/session/{}/execute/sync", self.session),
                Some(json!({"script": script, "args": []})),
            )
            .await
    }

    /// Poll `script` until it returns `want` (at most 15 s).
    async fn wait_for(&self, script: &str, want: Value) {
        let mut last = Value::Null;
        for _ in 0..150 {
            last = self.run(script).await;
            if last == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{script} gave {last}, waited for {want}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_turns_offline_on_the_open_page_without_a_reload() {
    if !browser_available() {
        return;
    }
    let desktop = sim("gpu-desktop", &["llama3.2", "qwen2.5"]).await;
    let laptop = sim("laptop", &["llama3.2"]).await;
    let mut config = tiered(&[("gpu-desktop", &desktop, 1), ("laptop", &laptop, 2)]);
    config.nodes[0].max_concurrency = Some(4);
    let gw = gateway(config).await;
    // Some traffic, so the page has latency numbers to show.
    for _ in 0..3 {
        let reply = post(
            &gw.url("/v1/chat/completions"),
            chat_body("llama3.2", false),
        )
        .await;
        assert_eq!(reply.status, http::StatusCode::OK);
    }

    let driver = Driver::start().await;
    let capabilities = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1400,900",
                format!("--user-data-dir={}", driver.profile.display())],
        }
    }}});
    let session = driver.call("POST", "/session", Some(capabilities)).await;
    let browser = Browser {
        driver: &driver,
        session: session["sessionId"].as_str().unwrap().to_owned(),
    };
    browser
        .driver
        .call(
            "POST",
            &format!("/session/{}/url", browser.session),
            Some(json!({"url": gw.url("/status")})),
        )
        .await;

    let state = |node: &str| {
        format!(
            "const r = document.getElementById('node-{node}'); return r ? r.dataset.state : null;"
        )
    };
    browser
        .wait_for(&state("gpu-desktop"), json!("online"))
        .await;
    browser.wait_for(&state("laptop"), json!("online")).await;
    // A mark that a reload would wipe.
    browser
        .run("window.__sameDocument = 42; return null;")
        .await;

    laptop.kill();
    browser.wait_for(&state("laptop"), json!("offline")).await;
    let reason = browser
        .run("return document.querySelector('#node-laptop .reason').textContent;")
        .await;
    assert!(
        reason.as_str().is_some_and(|r| !r.is_empty()),
        "offline without a reason: {reason}"
    );
    assert_eq!(
        browser.run("return window.__sameDocument;").await,
        json!(42),
        "the page reloaded"
    );
    assert_eq!(browser.run(&state("gpu-desktop")).await, json!("online"));
    let models = browser
        .run("return document.querySelector('#node-gpu-desktop').textContent;")
        .await;
    assert!(models.as_str().unwrap().contains("qwen2.5"), "{models}");
    // The "current resource": which node serves each model now.
    let serving = |model: &str| {
        format!(
            "const r = document.getElementById('model-{model}'); return r ? r.dataset.node : null;"
        )
    };
    browser
        .wait_for(&serving("llama3.2"), json!("gpu-desktop"))
        .await;
    browser
        .wait_for(&serving("qwen2.5"), json!("gpu-desktop"))
        .await;
    // Per node, the two charts of the last minutes (request rate, time to first token).
    let charts = browser
        .run("return document.querySelectorAll('#node-gpu-desktop svg.spark').length;")
        .await;
    assert_eq!(charts, json!(2));
    let forwards = browser
        .run("return document.getElementById('forwards').textContent;")
        .await;
    assert_eq!(forwards, json!("none configured"));

    let png = browser
        .driver
        .call(
            "GET",
            &format!("/session/{}/screenshot", browser.session),
            None,
        )
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_owned();
    std::fs::write(target.join("status-page.png"), &png).unwrap();
    browser
        .driver
        .call("DELETE", &format!("/session/{}", browser.session), None)
        .await;
}

//! Routing policy against simulated nodes: model groups and every fallback trigger,
//! context overflow to `context_fallback`, a node's own 429 and Retry-After, a 500
//! retried, breakers per (node, model), and clean aliases for the names nodes report.

mod common;

use std::time::Duration;

use tokio::time::Instant;

use common::*;
use http::StatusCode;
use meshgate::config::{Config, ModelGroupConfig};

fn group(name: &str, uses: &[&str], fallback: &[&str], context: Option<&str>) -> ModelGroupConfig {
    ModelGroupConfig {
        name: name.into(),
        uses: uses.iter().map(|s| s.to_string()).collect(),
        fallback: fallback.iter().map(|s| s.to_string()).collect(),
        context_fallback: context.map(str::to_owned),
    }
}

/// Nodes named after their sims, each serving its sim's models.
fn nodes(sims: &[(&str, &Sim)]) -> Config {
    config_for(&sims.iter().map(|(n, s)| (*n, s.url())).collect::<Vec<_>>())
}

fn model_of(reply: &Reply) -> String {
    reply
        .headers
        .get("x-meshgate-model")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

async fn chat(gw: &TestGateway, model: &str) -> Reply {
    post(&gw.url("/v1/chat/completions"), chat_body(model, false)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_balances_its_models_as_one_pool_and_is_listed() {
    let big = sim("big", &["llama3.1:70b"]).await;
    let mid = sim("mid", &["qwen2.5:32b"]).await;
    let mut config = nodes(&[("big", &big), ("mid", &mid)]);
    config.models = vec![group("chat", &["llama3.1:70b", "qwen2.5:32b"], &[], None)];
    let gw = gateway(config).await;

    let mut seen = std::collections::HashSet::new();
    for c in 0..40 {
        // Different conversations (the same one would stay on one node).
        let reply = post(&gw.url("/v1/chat/completions"), turn("chat", c, 0, false)).await;
        assert_eq!(reply.status, StatusCode::OK);
        // The node was asked for its own model, and the answer says which.
        let model = model_of(&reply);
        assert_eq!(reply.json()["model"], model.as_str());
        seen.insert((served_by(&reply).to_owned(), model));
    }
    assert!(
        seen.contains(&("big".into(), "llama3.1:70b".into())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("mid".into(), "qwen2.5:32b".into())),
        "{seen:?}"
    );
    let models = get(&gw.url("/v1/models")).await.json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"chat"), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fallback_trigger_and_never_on_the_clients_4xx() {
    let big = sim_with("big", 0, 0).await;
    let small = sim("small", &["llama3.2"]).await;
    // `big` serves `llama3.2` too in the sim; name its model apart with an alias.
    let mut config = probe_once(nodes(&[("big", &big), ("small", &small)]));
    config.nodes[0].aliases = [("big-model".to_string(), "llama3.2".to_string())].into();
    config.nodes[0].models = Some(vec!["llama3.2".into()]);
    config.nodes[0].max_concurrency = Some(1);
    config.nodes[1].aliases = [("small-model".to_string(), "llama3.2".to_string())].into();
    config.nodes[1].models = Some(vec!["llama3.2".into()]);
    config.timeouts.first_byte = Duration::from_millis(500);
    config.breaker.failures = 100; // keep `big` in play: each trigger is tested alone
    config.models = vec![group("chat", &["big-model"], &["small-model"], None)];
    let gw = gateway(config).await;
    let answer = |reply: &Reply| (reply.status, served_by(reply).to_owned(), model_of(reply));

    // Healthy: the pool answers.
    let reply = chat(&gw, "chat").await;
    assert_eq!(
        answer(&reply),
        (StatusCode::OK, "big".into(), "llama3.2".into())
    );

    // 5xx before the first token: the fallback answers.
    big.set_faults(Faults {
        status: Some(500),
        ..Faults::default()
    });
    assert_eq!(answer(&chat(&gw, "chat").await).1, "small");
    // 503, and no first token in time: the same.
    big.set_faults(Faults {
        status: Some(503),
        ..Faults::default()
    });
    assert_eq!(answer(&chat(&gw, "chat").await).1, "small");
    big.set_faults(Faults {
        stall: true,
        ..Faults::default()
    });
    let reply = chat(&gw, "chat").await;
    assert_eq!((reply.status, served_by(&reply)), (StatusCode::OK, "small"));

    // Saturated: big's one slot is taken by a slow stream; the fallback takes the next.
    big.set_faults(Faults::default());
    big.set_latency(Duration::ZERO, Duration::from_millis(100));
    let slow = EventStream::open(&gw.url("/v1/chat/completions"), chat_body("chat", true)).await;
    assert_eq!(slow.headers["x-meshgate-node"], "big");
    let reply = chat(&gw, "chat").await;
    assert_eq!((reply.status, served_by(&reply)), (StatusCode::OK, "small"));
    drop(slow);
    big.set_latency(Duration::ZERO, Duration::ZERO);

    // Down: the fallback.
    big.kill();
    let reply = chat(&gw, "chat").await;
    assert_eq!((reply.status, served_by(&reply)), (StatusCode::OK, "small"));
    big.revive().await.unwrap();

    // The client's own 4xx: back to the client, never to a fallback.
    big.set_faults(Faults {
        status: Some(400),
        ..Faults::default()
    });
    let before = chat_count(&small);
    let reply = chat(&gw, "chat").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(chat_count(&small), before, "a 400 reached the fallback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_overflow_goes_to_the_context_fallback_and_usage_is_the_answering_attempts() {
    let short = sim("short", &["qwen2.5:32b"]).await;
    let long = sim("long", &["qwen2.5:32b-128k"]).await;
    short.set_faults(Faults {
        context_tokens: Some(3),
        ..Faults::default()
    });
    let mut config = probe_once(nodes(&[("short", &short), ("long", &long)]));
    config.models = vec![group(
        "chat",
        &["qwen2.5:32b"],
        &[],
        Some("qwen2.5:32b-128k"),
    )];
    let gw = gateway(config).await;

    let metrics = || async {
        let text = String::from_utf8(get(&gw.url("/metrics")).await.body.to_vec()).unwrap();
        text.lines()
            .filter(|l| l.starts_with("meshgate_tokens_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = metrics().await;
    let body = serde_json::json!({
        "model": "chat",
        "messages": [{"role": "user", "content": "a prompt of more than three words"}],
    })
    .to_string();
    let reply = post(&gw.url("/v1/chat/completions"), body).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(served_by(&reply), "long");
    assert_eq!(model_of(&reply), "qwen2.5:32b-128k");
    assert_eq!(chat_count(&short), 1, "the short node said it once");
    let usage = &reply.json()["usage"];
    let total = usage["total_tokens"].as_f64().unwrap();
    assert_eq!(
        metrics().await - before,
        total,
        "only the answering attempt counts"
    );

    // A short prompt stays on the pool.
    let reply = chat(&gw, "chat").await;
    assert_eq!(reply.status, StatusCode::OK);
    // ... and a plain model has no context fallback: the node's 400 goes back as is.
    let body = serde_json::json!({
        "model": "qwen2.5:32b",
        "messages": [{"role": "user", "content": "a prompt of more than three words"}],
    })
    .to_string();
    let reply = post(&gw.url("/v1/chat/completions"), body).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&reply.body).contains("context size"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_429_sends_requests_elsewhere_and_its_retry_after_is_honoured() {
    let busy = sim("busy", &["llama3.2"]).await;
    let free = sim("free", &["llama3.2"]).await;
    let gw = gateway(probe_once(tiered(&[
        ("busy", &busy, 1),
        ("free", &free, 2),
    ])))
    .await;
    busy.set_faults(Faults {
        status: Some(429),
        retry_after_s: Some(30),
        ..Faults::default()
    });
    // Another node takes it at once, and the paused node is left alone meanwhile.
    for _ in 0..5 {
        let reply = chat(&gw, "llama3.2").await;
        assert_eq!((reply.status, served_by(&reply)), (StatusCode::OK, "free"));
    }
    assert_eq!(chat_count(&busy), 1, "the paused node was asked again");
    assert_eq!(gw.nodes.list()[0].health().as_str(), "degraded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_node_paused_is_waited_out_briefly_and_never_hammered() {
    let only = sim("only", &["llama3.2"]).await;
    let gw = gateway(probe_once(config_for(&[("only", only.url())]))).await;

    // A short pause (1 s, under max_retry_after): waited out, then asked again.
    only.set_faults(Faults {
        status: Some(429),
        retry_after_s: Some(1),
        ..Faults::default()
    });
    let started = Instant::now();
    let reply = chat(&gw, "llama3.2").await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(reply.headers.contains_key("retry-after"));
    let arrivals = only.stats().arrivals_ms;
    assert_eq!(arrivals.len(), 3, "attempts are bounded: {arrivals:?}");
    for pair in arrivals.windows(2) {
        assert!(
            pair[1] - pair[0] >= 950,
            "asked again before its Retry-After: {arrivals:?}"
        );
    }
    assert!(started.elapsed() >= Duration::from_secs(2));

    // A long pause: answered 429 with the node's retry-after, the node asked once only;
    // the next request does not reach it at all.
    only.reset_stats();
    only.set_faults(Faults {
        status: Some(429),
        retry_after_s: Some(30),
        ..Faults::default()
    });
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = chat(&gw, "llama3.2").await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.headers["retry-after"], "30");
    let reply = chat(&gw, "llama3.2").await;
    let error = reply.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded");
    let wait: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((28..=30).contains(&wait), "{wait} {error}");
    assert_eq!(chat_count(&only), 1, "the paused node was hammered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_from_the_only_node_is_tried_once_more_after_a_pause() {
    let only = sim("only", &["llama3.2"]).await;
    let gw = gateway(probe_once(config_for(&[("only", only.url())]))).await;
    only.set_faults(Faults {
        status: Some(500),
        ..Faults::default()
    });
    let url = gw.url("/v1/chat/completions");
    let request = tokio::spawn(async move { post(&url, chat_body("llama3.2", false)).await });
    // The node recovers during meshgate's pause.
    wait_until(|| chat_count(&only) == 1).await;
    only.set_faults(Faults::default());
    let reply = request.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["x-meshgate-attempts"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_model_is_refused_alone_and_used_again_once_it_recovers() {
    let two = sim("two", &["good", "bad"]).await;
    let mut config = config_for(&[("two", two.url())]);
    config.discovery.interval = Duration::from_millis(300);
    let gw = gateway(config).await;
    two.set_faults(Faults {
        fail_models: vec!["bad".into()],
        ..Faults::default()
    });
    for _ in 0..4 {
        let reply = chat(&gw, "bad").await;
        assert!(reply.status.is_server_error());
    }
    // The bad model's breaker is open on this node; the good model is unaffected.
    let failures_seen = two.stats().by_model["bad"];
    for _ in 0..10 {
        assert_eq!(chat(&gw, "good").await.status, StatusCode::OK);
    }
    let reply = chat(&gw, "bad").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        two.stats().by_model["bad"],
        failures_seen,
        "a refused model was tried"
    );
    let health = format!("{:?}", gw.nodes.list()[0].health());
    assert!(
        health.contains("Degraded") && health.contains("`bad`"),
        "{health}"
    );

    // Recovered: within about one probe interval it serves again.
    two.set_faults(Faults::default());
    let started = Instant::now();
    loop {
        if chat(&gw, "bad").await.status == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the model stayed refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.nodes.list()[0].health().as_str(), "online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_aliases_for_what_a_node_reports() {
    let file = sim("file", &["/models/SmolLM2-360M-Instruct-Q8_0.gguf"]).await;
    let mut config = config_for(&[("file", file.url())]);
    config.nodes[0].aliases = [(
        "smollm2".to_string(),
        "/models/SmolLM2-360M-Instruct-Q8_0.gguf".to_string(),
    )]
    .into();
    let gw = gateway(config).await;
    let reply = chat(&gw, "smollm2").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(model_of(&reply), "/models/SmolLM2-360M-Instruct-Q8_0.gguf");
    assert_eq!(
        file.stats().by_model["/models/SmolLM2-360M-Instruct-Q8_0.gguf"],
        1
    );
    let ids = get(&gw.url("/v1/models")).await.json()["data"].to_string();
    assert!(ids.contains("\"smollm2\""), "{ids}");

    // A group whose models no node serves yet is valid: unavailable, not unknown, and
    // /status says so; a served group says what answers it now.
    let mut config = config_for(&[("file", file.url())]);
    config.nodes[0].aliases = [(
        "smollm2".to_string(),
        "/models/SmolLM2-360M-Instruct-Q8_0.gguf".to_string(),
    )]
    .into();
    config.models = vec![
        group("future", &["not-pulled-yet"], &[], None),
        group("small", &["smollm2"], &[], None),
    ];
    gw.handle.reload(&config).await.unwrap();
    chat(&gw, "future")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "no_node_available");
    let status = get(&gw.url("/status.json")).await.json();
    let route = |name: &str| {
        status["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    assert_eq!(route("future")["node"], serde_json::Value::Null);
    assert_eq!(route("future")["group"], true);
    assert_eq!(route("small")["node"], "file");
    assert_eq!(route("small")["served_as"], "smollm2");
}

/// Turn `turn` (0-based) of conversation `c`: the same system prompt and first user
/// message every turn, then the turns so far.
fn turn(model: &str, c: usize, turn: usize, stream: bool) -> String {
    let mut messages = vec![
        serde_json::json!({"role": "system", "content": format!("You are assistant number {c}, with a long system prompt.")}),
        serde_json::json!({"role": "user", "content": format!("Conversation {c} starts here.")}),
    ];
    for t in 0..turn {
        messages.push(serde_json::json!({"role": "assistant", "content": format!("answer {t}")}));
        messages.push(serde_json::json!({"role": "user", "content": format!("follow-up {t}")}));
    }
    serde_json::json!({"model": model, "messages": messages, "stream": stream}).to_string()
}

async fn three_cached(names: [&str; 3], token_delay: Duration) -> Vec<Sim> {
    let mut sims = Vec::new();
    for name in names {
        sims.push(
            Sim::start(SimConfig {
                name: name.into(),
                ttft: Duration::from_millis(20),
                cached_ttft: Some(Duration::from_millis(1)),
                token_delay,
                tokens: 4,
                ..SimConfig::default()
            })
            .await
            .unwrap(),
        );
    }
    sims
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_of_a_conversation_stay_on_its_node_and_a_removed_node_moves_only_its_own() {
    let sims = three_cached(["a", "b", "c"], Duration::ZERO).await;
    let all = [("a", &sims[0]), ("b", &sims[1]), ("c", &sims[2])];
    let gw = gateway(nodes(&all)).await;
    let url = gw.url("/v1/chat/completions");
    let mut home = Vec::new();
    for c in 0..30 {
        let mut served = std::collections::HashSet::new();
        for t in 0..3 {
            let reply = post(&url, turn("llama3.2", c, t, false)).await;
            assert_eq!(reply.status, StatusCode::OK);
            served.insert(served_by(&reply).to_owned());
        }
        assert_eq!(served.len(), 1, "conversation {c} moved: {served:?}");
        home.push(served.into_iter().next().unwrap());
    }
    let spread: std::collections::HashSet<&String> = home.iter().collect();
    assert_eq!(spread.len(), 3, "conversations all on one node: {home:?}");

    // Node c leaves: only its conversations move.
    gw.handle.reload(&nodes(&all[..2])).await.unwrap();
    for (c, was) in home.iter().enumerate() {
        let now = served_by(&post(&url, turn("llama3.2", c, 3, false)).await).to_owned();
        if was != "c" {
            assert_eq!(&now, was, "conversation {c} moved though its node stayed");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_node_sheds_its_conversations_and_affinity_can_be_turned_off() {
    let sims = three_cached(["a", "b", "c"], Duration::from_millis(30)).await;
    let all = [("a", &sims[0]), ("b", &sims[1]), ("c", &sims[2])];
    let gw = gateway(nodes(&all)).await;
    let url = gw.url("/v1/chat/completions");
    let home = served_by(&post(&url, turn("llama3.2", 7, 0, false)).await).to_owned();
    // Two turns of the same conversation at once: the second does not pile onto the
    // first's node (over (1 + slack) x the mean in flight), it goes to another.
    let first = EventStream::open(&url, turn("llama3.2", 7, 1, true)).await;
    let second = EventStream::open(&url, turn("llama3.2", 7, 1, true)).await;
    assert_eq!(first.headers["x-meshgate-node"], home.as_str());
    assert_ne!(second.headers["x-meshgate-node"], home.as_str());
    drop((first, second));
    wait_until(|| gw.nodes.list().iter().all(|n| n.in_flight() == 0)).await;
    assert_eq!(
        served_by(&post(&url, turn("llama3.2", 7, 2, false)).await),
        home
    );

    // Off: the same conversation is spread by load alone.
    let mut off = nodes(&all);
    off.routing.affinity = false;
    gw.handle.reload(&off).await.unwrap();
    let mut served = std::collections::HashSet::new();
    for t in 0..30 {
        served.insert(served_by(&post(&url, turn("llama3.2", 7, t, false)).await).to_owned());
    }
    assert!(served.len() > 1, "{served:?}");
}

/// Who served each turn of `conversations` conversations, `turns` turns each, asked by
/// `ask(conversation, turn, previous answer)`; asserts each stayed on one node from
/// turn `from` on, and that the conversations did not all land on one node.
async fn homes<F, Fut>(conversations: usize, turns: usize, from: usize, mut ask: F)
where
    F: FnMut(usize, usize, Option<serde_json::Value>) -> Fut,
    Fut: std::future::Future<Output = (String, serde_json::Value)>,
{
    let mut homes = std::collections::HashSet::new();
    for c in 0..conversations {
        let mut served = std::collections::HashSet::new();
        let mut previous = None;
        for t in 0..turns {
            let (node, answer) = ask(c, t, previous.take()).await;
            if t >= from {
                served.insert(node);
            }
            previous = Some(answer);
        }
        assert_eq!(served.len(), 1, "conversation {c} moved: {served:?}");
        homes.extend(served);
    }
    assert!(homes.len() > 1, "every conversation on one node: {homes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_keeps_a_conversation_on_its_node() {
    use serde_json::{Value, json};
    let sims = three_cached(["a", "b", "c"], Duration::ZERO).await;
    let gw = gateway(nodes(&[("a", &sims[0]), ("b", &sims[1]), ("c", &sims[2])])).await;
    let answered = |reply: Reply| {
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        (served_by(&reply).to_owned(), reply.json())
    };

    // Anthropic Messages: the system prompt and the first message (Claude Code, agents).
    let url = gw.url("/v1/messages");
    homes(20, 3, 0, |c, t, _| {
        let mut messages = vec![json!({"role": "user", "content": format!("Conversation {c}.")})];
        for i in 0..t {
            messages.push(json!({"role": "assistant", "content": [{"type": "text", "text": format!("answer {i}")}]}));
            messages.push(json!({"role": "user", "content": format!("follow-up {i}")}));
        }
        let body = json!({"model": "llama3.2", "max_tokens": 16,
            "system": [{"type": "text", "text": "You are a coding agent."}], "messages": messages});
        let url = url.clone();
        async move { answered(post(&url, body.to_string()).await) }
    })
    .await;

    // Responses, the client sending the whole history with its instructions.
    let url = gw.url("/v1/responses");
    homes(20, 3, 0, |c, t, _| {
        let mut input = vec![json!({"role": "user", "content": format!("Conversation {c}.")})];
        for i in 0..t {
            input.push(json!({"role": "assistant", "content": format!("answer {i}")}));
            input.push(json!({"role": "user", "content": format!("follow-up {i}")}));
        }
        let body = json!({"model": "llama3.2", "instructions": "Be brief.", "input": input});
        let url = url.clone();
        async move { answered(post(&url, body.to_string()).await) }
    })
    .await;

    // Responses chained by previous_response_id: the first turn alone is not a
    // conversation yet (it goes by load); from the second on, it is.
    homes(20, 4, 1, |c, t, previous: Option<Value>| {
        let mut body =
            json!({"model": "llama3.2", "input": format!("Conversation {c}, turn {t}.")});
        if let Some(previous) = previous {
            body["previous_response_id"] = previous["id"].clone();
        }
        let url = url.clone();
        async move { answered(post(&url, body.to_string()).await) }
    })
    .await;

    // gRPC chat, as on REST.
    homes(20, 3, 0, |c, t, _| {
        use meshgate_proto::v1::ChatMessage;
        use meshgate_proto::v1::chat_message::Content;
        let message = |role: &str, text: String| ChatMessage {
            role: role.into(),
            content: Some(Content::Text(text)),
            ..Default::default()
        };
        let mut request = grpc::chat("llama3.2");
        request.messages = vec![
            message("system", "You are a helper.".into()),
            message("user", format!("Conversation {c}.")),
        ];
        for i in 0..t {
            request
                .messages
                .push(message("assistant", format!("answer {i}")));
            request
                .messages
                .push(message("user", format!("follow-up {i}")));
        }
        let mut client = grpc::inference(gw.addr);
        async move {
            let reply = client.chat_completion(request).await.unwrap();
            let node = reply
                .metadata()
                .get("x-meshgate-node")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            (node, Value::Null)
        }
    })
    .await;
}

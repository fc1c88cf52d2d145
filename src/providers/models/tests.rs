use super::*;
use crate::config::Config;

const CONFIG: &str = r#"
listen: 127.0.0.1:1
identity: { issuer: t }
providers:
  - { name: anthropic, kind: anthropic, base_url: "http://a", routes: [/v1/messages] }
  - { name: anthropic-2, kind: anthropic, base_url: "http://b", routes: [/v1/messages] }
  - { name: openai, kind: openai, base_url: "http://o", routes: [/v1/chat/completions, /v1/embeddings] }
  - { name: openai-2, kind: openai, base_url: "http://o2", routes: [/v1/chat/completions, /v1/embeddings] }
  - { name: chat-only, kind: openai, base_url: "http://c", routes: [/v1/chat/completions] }
  - { name: embed-only, kind: openai, base_url: "http://e", routes: [/v1/embeddings] }
models:
  claude-sonnet-4-5: { deployments: [anthropic, anthropic-2] }
  claude-fast:
    deployments: [{ provider: anthropic-2, model: claude-haiku-4-5 }]
  "gpt-4o*":
    strategy: weighted
    deployments: [{ provider: openai, weight: 3 }, { provider: openai-2, model: gpt-4o-prod, weight: 1 }]
  "gpt-4o-mini*": { deployments: [openai-2] }
"#;

fn build(text: &str) -> Result<Models, Vec<ModelsError>> {
    let cfg = Config::parse(text).expect("config");
    let providers: HashMap<String, Arc<Provider>> = cfg
        .providers
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p.api_key_env = None;
            let provider = Provider::from_config(&p, &cfg).expect("provider");
            (p.name.clone(), Arc::new(provider))
        })
        .collect();
    Models::from_config(&cfg, &providers)
}

fn names(plan: &[Deployment]) -> Vec<String> {
    plan.iter()
        .map(|d| match &d.model {
            Some(m) => format!("{}:{m}", d.provider.name),
            None => d.provider.name.clone(),
        })
        .collect()
}

#[test]
fn exact_names_then_the_longest_glob() {
    let m = build(CONFIG).unwrap();
    let cooling = Cooling::default();
    let plan = |model: &str| {
        m.get(model)
            .map(|r| names(&r.plan("alice", Endpoint::Messages, &cooling, 3)))
    };
    assert_eq!(
        plan("claude-sonnet-4-5"),
        Some(vec!["anthropic".into(), "anthropic-2".into()])
    );
    assert_eq!(
        plan("claude-fast"),
        Some(vec!["anthropic-2:claude-haiku-4-5".into()])
    );
    assert!(m.get("claude-opus-4-1").is_none());
    let chat = |model: &str| {
        m.get(model)
            .map(|r| names(&r.plan("alice", Endpoint::ChatCompletions, &cooling, 3)))
    };
    assert_eq!(chat("gpt-4o-mini-2024"), Some(vec!["openai-2".into()]));
    assert_eq!(chat("gpt-4o").map(|p| p.len()), Some(2));
    assert_eq!(
        m.get("claude-sonnet-4-5")
            .map(|r| r.plan("a", Endpoint::Messages, &cooling, 1).len()),
        Some(1),
        "max_attempts caps the plan"
    );
}

#[test]
fn weighted_callers_stick_and_spread_by_weight() {
    let m = build(CONFIG).unwrap();
    let cooling = Cooling::default();
    let route = m.get("gpt-4o").unwrap();
    let mut first = 0;
    for i in 0..1000 {
        let sub = format!("user-{i}");
        let plan = route.plan(&sub, Endpoint::ChatCompletions, &cooling, 3);
        assert_eq!(plan.len(), 2, "the other deployment is the fallback");
        // The same caller gets the same order every time.
        let again = route.plan(&sub, Endpoint::ChatCompletions, &cooling, 3);
        assert_eq!(names(&plan), names(&again));
        if plan[0].provider.name == "openai" {
            first += 1;
        }
    }
    // Weights 3 : 1 over 1,000 callers: 750 expected; 4 standard deviations
    // (sqrt(1000 * 0.75 * 0.25) = 13.7) either way.
    assert!(
        (695..=805).contains(&first),
        "{first} of 1000 on the weight-3 deployment"
    );
}

#[test]
fn cooling_deployments_are_skipped_until_they_recover() {
    let m = build(CONFIG).unwrap();
    let cooling = Cooling::default();
    let route = m.get("claude-sonnet-4-5").unwrap();
    cooling.cool("anthropic", Duration::from_millis(150));
    assert_eq!(
        names(&route.plan("a", Endpoint::Messages, &cooling, 3)),
        ["anthropic-2"]
    );
    // Every deployment cooling: they are all tried, in order.
    cooling.cool("anthropic-2", Duration::from_millis(150));
    assert_eq!(
        names(&route.plan("a", Endpoint::Messages, &cooling, 3)),
        ["anthropic", "anthropic-2"]
    );
    // A shorter cooldown never cuts a longer one.
    cooling.cool("anthropic", Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!cooling.is_cooling("anthropic", Instant::now()));
    assert_eq!(
        names(&route.plan("a", Endpoint::Messages, &cooling, 3)),
        ["anthropic", "anthropic-2"]
    );
    // A weighted caller whose deployment cools moves to its fallback.
    let route = m.get("gpt-4o").unwrap();
    let mine = route.plan("bob", Endpoint::ChatCompletions, &cooling, 3);
    cooling.cool(&mine[0].provider.name, Duration::from_secs(60));
    let now = route.plan("bob", Endpoint::ChatCompletions, &cooling, 3);
    assert_eq!(names(&now), names(&mine[1..]));
}

#[test]
fn entries_that_cannot_work_are_errors() {
    let bad = CONFIG.replace(
        "claude-fast:\n    deployments: [{ provider: anthropic-2, model: claude-haiku-4-5 }]",
        "claude-fast:\n    deployments: [{ provider: nope, model: x }, { provider: anthropic, weight: 0 }]\n  mixed: { deployments: [anthropic, openai] }\n  narrow: { deployments: [chat-only, embed-only] }
  partial: { deployments: [openai, chat-only] }\n  empty: { deployments: [] }",
    );
    let errors = build(&bad).err().expect("errors");
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        text.iter().any(|e| e.contains("unknown provider \"nope\"")),
        "{text:?}"
    );
    assert!(text.iter().any(|e| e.contains("weight 0")), "{text:?}");
    assert!(
        text.iter()
            .any(|e| e.contains("models.mixed: provider openai cannot serve messages")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|e| e.contains("models.narrow: provider embed-only cannot serve chat_completions")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|e| e.contains("models.empty: no deployments")),
        "{text:?}"
    );
    // Serving fewer endpoints than the first is fine: such a deployment is
    // tried for those it serves.
    assert!(
        !text.iter().any(|e| e.contains("models.partial")),
        "{text:?}"
    );
}

#[test]
fn a_request_tries_only_the_deployments_serving_its_endpoint() {
    let text = format!("{CONFIG}  partial: {{ deployments: [chat-only, openai] }}\n");
    let m = build(&text).unwrap();
    let route = m.get("partial").unwrap();
    let cooling = Cooling::default();
    assert_eq!(
        names(&route.plan("a", Endpoint::ChatCompletions, &cooling, 3)),
        ["chat-only", "openai"]
    );
    assert_eq!(
        names(&route.plan("a", Endpoint::Embeddings, &cooling, 3)),
        ["openai"]
    );
}

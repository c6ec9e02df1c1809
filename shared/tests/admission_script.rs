//! The admission script called the way any Redis client calls it (docs/redis-schema.md,
//! "Admission from any Redis client"): the script text from the repository's files, `EVALSHA`
//! with the documented context arguments. A spec that is not a job spec of the documented shape
//! is refused with code -2 and a reason naming the field, and nothing at all is written.

mod support;

use std::path::{Path, PathBuf};

use runfleet_shared::config::Settings;
use runfleet_shared::crypto::CredentialCipher;
use runfleet_shared::ids::JobId;
use runfleet_shared::job::{Credentials, JobSpec};
use runfleet_shared::keys::Keys;
use runfleet_shared::redis_pool::RedisPools;
use runfleet_shared::store::{FleetPolicy, JobStore, RedisStore};
use serde_json::{Value, json};

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn read(path: &str) -> String {
    let file = repo_file(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
}

/// A store script as the document says to build it: the prelude, a newline, the body.
fn script_text(body: &str) -> String {
    format!(
        "{}\n{}",
        read("shared/src/scripts/lib.lua"),
        read(&format!("shared/src/scripts/{body}"))
    )
}

/// The context arguments' `ScriptContext` fields and defaults, read from the document's table
/// (the third and last columns of each row whose first cell is the argument's number).
fn documented_context() -> (Vec<String>, Vec<String>) {
    let doc = read("docs/redis-schema.md");
    let section = doc
        .split("### 2. The 15 context arguments")
        .nth(1)
        .expect("docs/redis-schema.md has the section on the context arguments");
    let (mut fields, mut args) = (Vec::new(), Vec::new());
    for line in section.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // A table row `| n | meaning | field | setting | default |` splits into 7 cells.
        let [_, number, _, field, _, default, _] = cells.as_slice() else {
            continue;
        };
        let Ok(n) = number.parse::<usize>() else {
            continue;
        };
        assert_eq!(n, args.len() + 1, "context arguments are listed in order");
        let value = default
            .split('`')
            .nth(1)
            .unwrap_or_else(|| panic!("row {n}: the default is in backticks: {line}"));
        args.push(value.to_owned());
        fields.push(field.trim_matches('`').to_owned());
    }
    (fields, args)
}

/// The documented table is what the store itself sends with the default settings.
#[test]
fn the_documented_context_arguments_are_what_the_store_sends() {
    let settings = Settings::default();
    let keys = Keys::of(&settings.redis);
    let pools = RedisPools::new(&settings.redis).expect("pool settings");
    let store = RedisStore::new(pools, keys.clone(), FleetPolicy::from_settings(&settings))
        .queuing_into(&settings.queue.name);
    let (fields, args) = documented_context();
    assert_eq!(args, store.context_args().to_vec());
    // The fields are named as in the struct, in its order (its Debug output lists them so).
    let debug = format!("{:?}", store.script_context());
    let mut at = 0;
    for field in &fields {
        let found = debug[at..].find(&format!(" {field}: "));
        at += 1 + found.unwrap_or_else(|| panic!("ScriptContext has no field {field} after {at}"));
    }
}

/// An outside client: a connection, the admission script loaded, the context of its fleet.
struct Client {
    pools: RedisPools,
    keys: Keys,
    sha: String,
    context: Vec<String>,
}

impl Client {
    /// A client on a fleet of its own (a unique prefix) with the documented defaults.
    async fn new() -> Self {
        let pools = support::redis_pools().await;
        let keys = support::unique_keys();
        let mut context = documented_context().1;
        context[0] = keys.prefix().to_owned();
        context[11] = format!("{}:queue:jobs:ready", keys.prefix());
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(script_text("store_admit.lua"))
            .query_async(&mut *pools.commands.get().await.unwrap())
            .await
            .expect("SCRIPT LOAD");
        Self {
            pools,
            keys,
            sha,
            context,
        }
    }

    /// `EVALSHA` of the admission script; returns the code and the reply's last element.
    async fn admit(&self, job: &str, user: &str, strategy: &str, spec: &str) -> (i64, String) {
        let (code, _tier, _limit, _current, last): (i64, String, i64, i64, redis::Value) =
            redis::cmd("EVALSHA")
                .arg(&self.sha)
                .arg(0)
                .arg(&self.context)
                .arg(job)
                .arg(user)
                .arg(strategy)
                .arg(spec)
                .query_async(&mut *self.pools.commands.get().await.unwrap())
                .await
                .expect("EVALSHA of the admission script");
        let last = match last {
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            redis::Value::Int(i) => i.to_string(),
            other => format!("{other:?}"),
        };
        (code, last)
    }

    /// Every key of this client's fleet.
    async fn written(&self) -> Vec<String> {
        redis::cmd("KEYS")
            .arg(format!("{}:*", self.keys.prefix()))
            .query_async(&mut *self.pools.commands.get().await.unwrap())
            .await
            .expect("KEYS")
    }

    async fn cleanup(self) {
        support::cleanup(&self.pools, &self.keys).await;
    }
}

const USER: &str = "user-any";
const STRATEGY: &str = "s1";

/// The example spec of the document (the JSON block of its section 3).
fn documented_example() -> Value {
    let doc = read("docs/redis-schema.md");
    let block = doc
        .split("### 3. The job spec")
        .nth(1)
        .and_then(|s| s.split("```json").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("docs/redis-schema.md shows an example spec in section 3");
    serde_json::from_str(block).expect("the documented example spec is JSON")
}

/// The document's example spec made out for `job` of [`USER`] and [`STRATEGY`], its
/// credentials sealed for `job`.
fn spec(job: &str) -> Value {
    let sealed = CredentialCipher::ephemeral()
        .seal(
            &JobId::new(job),
            &Credentials {
                api_key: "key".into(),
                api_secret: "secret".into(),
            },
        )
        .unwrap();
    let mut spec = documented_example();
    spec["id"] = json!(job);
    spec["userId"] = json!(USER);
    spec["strategyId"] = json!(STRATEGY);
    spec["credentials"] = json!(sealed);
    spec
}

/// One refused spec: its JSON text, the field its reason must name, and whether the Rust
/// `JobSpec` refuses to read it too (the rest are refused for what the schema adds: ids that
/// agree with the arguments, patterns, sealed shapes).
struct Refused {
    what: &'static str,
    job: String,
    text: String,
    field: &'static str,
    unreadable: bool,
}

fn refused_specs() -> Vec<Refused> {
    let job = "job-refused";
    let base = spec(job);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut s = base.clone();
        change(&mut s);
        s.to_string()
    };
    let case = |what, text, field, unreadable| Refused {
        what,
        job: job.to_owned(),
        text,
        field,
        unreadable,
    };
    vec![
        case(
            "trailing garbage after the JSON",
            format!("{base} x"),
            "spec",
            true,
        ),
        case("a second JSON value", format!("{base}{{}}"), "spec", true),
        case("an array", json!([base]).to_string(), "spec", true),
        case("an empty array", "[]".into(), "spec", true),
        case(
            "a string",
            json!(base.to_string()).to_string(),
            "spec",
            true,
        ),
        case("null", "null".into(), "spec", true),
        case(
            "a spec whose id is another job's",
            with(&|s| s["id"] = json!("job-other")),
            "spec.id",
            false,
        ),
        case(
            "a spec for another user",
            with(&|s| s["userId"] = json!("mallory")),
            "spec.userId",
            false,
        ),
        case(
            "a numeric brokerId",
            with(&|s| s["brokerId"] = json!(7)),
            "spec.brokerId",
            true,
        ),
        case(
            "no config.type",
            with(&|s| {
                s["config"].as_object_mut().unwrap().remove("type");
            }),
            "spec.config.type",
            true,
        ),
        case(
            "an unknown config field",
            with(&|s| s["config"]["typo"] = json!(1)),
            "spec.config.typo",
            true,
        ),
        case(
            "parameters as an array",
            with(&|s| s["config"]["parameters"] = json!([1, 2])),
            "spec.config.parameters",
            true,
        ),
        case(
            "an instrument that is not a string",
            with(&|s| s["config"]["instruments"] = json!(["BTC-PERPETUAL", 1])),
            "spec.config.instruments",
            true,
        ),
        case(
            "a risk limit as a string",
            with(&|s| s["config"]["riskManagement"]["stopLossPercent"] = json!("2")),
            "spec.config.riskManagement.stopLossPercent",
            false,
        ),
        case(
            "credentials in plain text",
            with(&|s| s["credentials"] = json!({"apiKey": "key", "apiSecret": "secret"})),
            "spec.credentials",
            true,
        ),
        case(
            "no credentials",
            with(&|s| {
                s.as_object_mut().unwrap().remove("credentials");
            }),
            "spec.credentials",
            true,
        ),
        case(
            "a nonce that is not 12 bytes of base64",
            with(&|s| s["credentials"]["nonce"] = json!("c2hvcnQ=")),
            "spec.credentials.nonce",
            false,
        ),
        case(
            "a ciphertext that is not base64",
            with(&|s| s["credentials"]["ciphertext"] = json!("key:secret, not sealed at all")),
            "spec.credentials.ciphertext",
            false,
        ),
        Refused {
            what: "a job id with a character outside the id alphabet",
            job: "job 1".into(),
            text: spec("job 1").to_string(),
            field: "jobId",
            unreadable: false,
        },
    ]
}

#[tokio::test]
async fn a_spec_of_the_wrong_shape_is_refused_naming_the_field_and_nothing_is_written() {
    let client = Client::new().await;
    for case in refused_specs() {
        assert_eq!(
            serde_json::from_str::<JobSpec>(&case.text).is_err(),
            case.unreadable,
            "{}: whether the Rust JobSpec can read it",
            case.what
        );
        let (code, reason) = client.admit(&case.job, USER, STRATEGY, &case.text).await;
        assert_eq!(code, -2, "{}: refused as invalid ({reason})", case.what);
        assert!(
            reason.starts_with(&format!("{}:", case.field)),
            "{}: the reason names {}: {reason}",
            case.what,
            case.field
        );
        let written = client.written().await;
        assert!(
            written.is_empty(),
            "{}: nothing may be written, but these keys were: {written:?}",
            case.what
        );
    }
    client.cleanup().await;
}

#[tokio::test]
async fn the_reserved_user_is_refused_and_nothing_is_written() {
    let client = Client::new().await;
    let mut s = spec("job-system");
    s["userId"] = json!("system");
    let (code, reason) = client
        .admit("job-system", "system", STRATEGY, &s.to_string())
        .await;
    assert_eq!(
        (code, reason.starts_with("userId:")),
        (-2, true),
        "{reason}"
    );
    assert!(client.written().await.is_empty());
    client.cleanup().await;
}

/// A change to the example spec.
type Change = fn(&mut Value);

/// Shapes the schema allows are admitted, queued in the same step, and read back by the fleet.
#[tokio::test]
async fn a_spec_of_the_documented_shape_is_admitted_queued_and_readable() {
    let client = Client::new().await;
    let store = RedisStore::new(
        client.pools.clone(),
        client.keys.clone(),
        FleetPolicy::default(),
    );
    let variants: [(&str, Change); 4] = [
        ("the document's example", |_| {}),
        ("riskManagement null", |s| {
            s["config"]["riskManagement"] = Value::Null;
        }),
        ("no parameters, risk or instruments", |s| {
            let c = s["config"].as_object_mut().unwrap();
            for f in ["parameters", "riskManagement", "instruments"] {
                c.remove(f);
            }
        }),
        ("an extra top-level field", |s| s["note"] = json!("kept")),
    ];
    for (i, (what, change)) in variants.into_iter().enumerate() {
        // Each variant is another user's, so the free tier's one slot never refuses it.
        let (job, user) = (format!("job-ok-{i}"), format!("user-ok-{i}"));
        let mut s = spec(&job);
        s["userId"] = json!(user);
        change(&mut s);
        let (code, last) = client.admit(&job, &user, STRATEGY, &s.to_string()).await;
        assert_eq!(code, 1, "{what}: admitted ({last})");
        let mut conn = client.pools.commands.get().await.unwrap();
        let queued: Vec<String> = redis::cmd("LRANGE")
            .arg(client.keys.ready("jobs"))
            .arg(0)
            .arg(-1)
            .query_async(&mut *conn)
            .await
            .unwrap();
        assert!(queued.contains(&job), "{what}: queued in the same step");
        let spec = store.spec(&JobId::new(job.as_str())).await.unwrap();
        assert_eq!(
            spec.map(|s| s.id),
            Some(JobId::new(job.as_str())),
            "{what}: the fleet reads the stored spec"
        );
    }
    client.cleanup().await;
}

//! `runfleet`: the command line of a runfleet fleet, over the HTTP API (runfleet-client). It
//! never talks to Redis. Human tables by default, `--json` for machines (the API's own
//! answers); exit codes tell apart what a script must (docs/cli.md):
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | done |
//! | 1 | anything else (a local file that cannot be written, ...) |
//! | 2 | usage: bad flags, an unreadable `--file`, a job that is not JSON |
//! | 3 | refused by the API (a 4xx other than 401 and 404: limit reached, forbidden, invalid, rate limited) |
//! | 4 | not found (404) |
//! | 5 | unauthorized (401: no key, a wrong or revoked key) |
//! | 6 | unreachable, no answer in time, or a server error (5xx, also after the retries of a 503) |

mod settings;
mod show;
mod top;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use runfleet_client::api::{ErrorBody, Refused, StreamGap};
use runfleet_client::{
    Client, ClientError, Credentials, EventFilter, JobId, JobStatus, StartRunnerRequest, StopMode,
    StopOutcome, StrategyConfig, StreamEvent, Tier, UserId,
};
use serde::Serialize;

/// runfleet's command line: start, stop and watch runners over the HTTP API.
#[derive(Debug, Parser)]
#[command(name = "runfleet", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Where and how to call.
#[derive(Debug, Args)]
struct Global {
    /// The server (an orchestrator or a balancer in front of several).
    #[arg(long, global = true, env = "RUNFLEET_URL")]
    url: Option<String>,
    /// The bearer key: the admin key or a user key (sent in the Authorization header only).
    #[arg(long, global = true, env = "RUNFLEET_KEY", hide_env_values = true)]
    key: Option<String>,
    /// The config file (default: runfleet/config.toml in the user's config directory).
    #[arg(long, global = true, env = "RUNFLEET_CLI_CONFIG")]
    config: Option<PathBuf>,
    /// Print the API's answers as JSON (one document; one per line for followed events).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a runner: from flags, from `--file job.json`, or from the start request's JSON on stdin.
    Start(StartArgs),
    /// Stop a runner: flatten its positions (the default), or `--hold` them.
    Stop {
        /// The runner (`job-…`).
        job: String,
        /// Leave the positions open instead of flattening them.
        #[arg(long)]
        hold: bool,
        /// How long to wait for the node to confirm the stop (seconds).
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
    },
    /// A user's runners, or without a user (admin key) the fleet-wide load.
    Status {
        /// The user.
        user: Option<String>,
    },
    /// One runner in detail: its record, positions and stats.
    Runner {
        /// The runner (`job-…`).
        job: String,
    },
    /// A runner's event history; with `--follow` (or without a runner) the live events.
    Events(EventsArgs),
    /// The live worker nodes (admin key).
    Nodes,
    /// A user's entitlement: read it, or grant a tier (admin key).
    #[command(subcommand)]
    Entitlement(EntitlementCommand),
    /// A user's API keys (admin key).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// A live full-screen view of the fleet (admin key); `q` quits.
    Top {
        /// Print one frame as plain text and exit (for scripts).
        #[arg(long)]
        once: bool,
        /// How often to read the fleet's status (milliseconds).
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Shell completions, printed to stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// The config file: `set` the server and key, `show` what is in force.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Args)]
struct StartArgs {
    /// The start request as JSON (docs/api.md); `-` reads it from stdin.
    #[arg(long, conflicts_with_all = ["user", "strategy", "strategy_type"])]
    file: Option<PathBuf>,
    /// Whose runner (required without `--file`).
    #[arg(long)]
    user: Option<String>,
    /// The user's name for the strategy (required without `--file`).
    #[arg(long)]
    strategy: Option<String>,
    /// The strategy type: `scalping`, `sma-cross` (required without `--file`).
    #[arg(long = "type")]
    strategy_type: Option<String>,
    /// Display name (default: the strategy id).
    #[arg(long)]
    name: Option<String>,
    /// The broker.
    #[arg(long, default_value = "paper")]
    broker: String,
    /// A strategy parameter, `name=value` (the value read as JSON when it is JSON).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// An instrument (repeat for more; default: the strategy's).
    #[arg(long = "instrument")]
    instruments: Vec<String>,
    /// The broker's API key (the paper broker takes any).
    #[arg(
        long,
        env = "RUNFLEET_BROKER_KEY",
        hide_env_values = true,
        default_value = "paper"
    )]
    broker_key: String,
    /// The broker's API secret.
    #[arg(
        long,
        env = "RUNFLEET_BROKER_SECRET",
        hide_env_values = true,
        default_value = "paper"
    )]
    broker_secret: String,
    /// Wait until the runner is running.
    #[arg(long)]
    wait: bool,
    /// How long `--wait` waits (seconds).
    #[arg(long, default_value_t = 60)]
    wait_secs: u64,
}

#[derive(Debug, Args)]
struct EventsArgs {
    /// The runner; without one, every runner the key may see (live only).
    job: Option<String>,
    /// Go on printing events as they happen.
    #[arg(long, short)]
    follow: bool,
    /// Only this user's runners (live events).
    #[arg(long)]
    user: Option<String>,
    /// Start after this event id (`<ms>-<seq>`, `0-0` for every event still kept).
    #[arg(long)]
    since: Option<String>,
    /// Stop after this many live events.
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum EntitlementCommand {
    /// The user's tier, limit and slots in use.
    Get {
        /// The user.
        user: String,
    },
    /// Grant a tier for some days (admin key).
    Set {
        /// The user.
        user: String,
        /// `free`, `basic`, `pro` or `enterprise`.
        tier: Tier,
        /// For how many days (1-3650).
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Issue a key for the user (shown this once).
    Issue {
        /// The user.
        user: String,
    },
    /// The user's keys (never their secrets).
    List {
        /// The user.
        user: String,
    },
    /// Revoke one of the user's keys.
    Revoke {
        /// The user.
        user: String,
        /// The key's id.
        key_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Write the server and/or key into the config file (mode 0600).
    Set {
        /// The server to remember.
        #[arg(long = "server")]
        server: Option<String>,
        /// The key to remember.
        #[arg(long = "api-key")]
        api_key: Option<String>,
    },
    /// The server in force, where it came from, and whether a key is set (never the key).
    Show,
}

/// A failure that is the caller's: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

/// A failure with its own exit code (a flatten that left positions open: 6, as its 502).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct Failed {
    code: u8,
    message: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.global.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = exit_code(&e);
            if let Some(api) = e.downcast_ref::<ClientError>() {
                if json && let Some(detail) = api.detail() {
                    let body = ErrorBody {
                        success: Refused,
                        error: detail.clone(),
                    };
                    println!("{}", serde_json::to_string(&body).unwrap_or_default());
                }
                eprintln!("error: {api}");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(code)
        }
    }
}

/// The documented exit code of a failure.
fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Usage>().is_some() {
        return 2;
    }
    if let Some(f) = e.downcast_ref::<Failed>() {
        return f.code;
    }
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::Api { status, .. }) => match status {
            401 => 5,
            404 => 4,
            408 => 6,
            400..500 => 3,
            _ => 6,
        },
        Some(ClientError::InvalidUrl { .. }) => 2,
        Some(_) => 6,
        None => 1,
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = cli.global;
    let config_path = settings::path(g.config.as_deref());
    let out = Out { json: g.json };
    // The server and key, for the commands that call it.
    let connect = || -> anyhow::Result<Client> {
        let file = settings::load(config_path.as_deref()).map_err(|e| Usage(format!("{e:#}")))?;
        let resolved = settings::resolve(g.url.clone(), g.key.clone(), file);
        Ok(Client::new(&resolved.url, resolved.key.as_deref())?)
    };
    match cli.command {
        Command::Start(args) => start(&connect()?, out, args).await,
        Command::Stop {
            job,
            hold,
            wait_secs,
        } => {
            let mode = if hold {
                StopMode::Hold
            } else {
                StopMode::Flatten
            };
            stop(&connect()?, out, JobId::new(job), mode, wait_secs).await
        }
        Command::Status { user: Some(user) } => {
            let answer = connect()?.user_runners(&UserId::new(user)).await?;
            out.print(&answer, || show::user_runners(&answer))
        }
        Command::Status { user: None } => {
            let answer = connect()?.fleet_status().await?;
            out.print(&answer, || show::fleet(&answer))
        }
        Command::Runner { job } => {
            let answer = connect()?.runner(&JobId::new(job)).await?;
            out.print(&answer, || show::runner(answer.view.record()))
        }
        Command::Events(args) => events(&connect()?, out, args).await,
        Command::Nodes => {
            let answer = connect()?.nodes().await?;
            out.print(&answer, || show::nodes(&answer))
        }
        Command::Entitlement(EntitlementCommand::Get { user }) => {
            let e = connect()?.entitlement(&UserId::new(user)).await?;
            out.print(&e, || {
                format!(
                    "user {}: tier {}, {} of {} runners in use{}{}",
                    e.user_id,
                    e.tier.as_str(),
                    e.current_workers,
                    e.max_workers,
                    e.expires_at.map_or(String::new(), |at| format!(
                        ", ends {}",
                        show::until(at, show::now_ms())
                    )),
                    if e.is_entitled { "" } else { " (no free slot)" }
                )
            })
        }
        Command::Entitlement(EntitlementCommand::Set { user, tier, days }) => {
            let granted = connect()?
                .set_entitlement(&UserId::new(user), tier, days)
                .await?;
            out.print(&granted, || show::granted(&granted))
        }
        Command::Keys(KeysCommand::Issue { user }) => {
            let k = connect()?.issue_key(&UserId::new(user)).await?;
            out.print(&k, || show::issued(&k))
        }
        Command::Keys(KeysCommand::List { user }) => {
            let k = connect()?.keys(&UserId::new(user)).await?;
            out.print(&k, || show::keys(&k))
        }
        Command::Keys(KeysCommand::Revoke { user, key_id }) => {
            let done = connect()?.revoke_key(&UserId::new(user), &key_id).await?;
            out.print(&done, || format!("key {key_id} revoked"))
        }
        Command::Top { once, interval_ms } => {
            let interval = Duration::from_millis(interval_ms.max(100));
            if once {
                let state = top::App::read_once(&connect()?).await?;
                print!("{}", top::render_text(&state, 100, 32));
                Ok(())
            } else {
                top::run(connect()?, interval).await
            }
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "runfleet",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Config(c) => config(c, config_path.clone(), g.url.clone(), g.key.clone()),
    }
}

/// How to print an answer: its JSON, or for people.
#[derive(Debug, Clone, Copy)]
struct Out {
    json: bool,
}

impl Out {
    fn print<T: Serialize>(self, answer: &T, human: impl FnOnce() -> String) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string(answer)?);
        } else {
            println!("{}", human());
        }
        Ok(())
    }

    /// A spinner on stderr (hidden for `--json` and when stderr is no terminal).
    fn spinner(self, message: String) -> ProgressBar {
        if self.json || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new_spinner().with_message(message);
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    }
}

/// The start request the arguments say.
fn start_request(args: &StartArgs) -> anyhow::Result<StartRunnerRequest> {
    let from_json = |text: &str, whence: &str| {
        serde_json::from_str::<StartRunnerRequest>(text)
            .map_err(|e| Usage(format!("{whence} is not a start request: {e}")))
    };
    let flags_given =
        args.user.is_some() || args.strategy.is_some() || args.strategy_type.is_some();
    let stdin = match &args.file {
        Some(p) if p.as_os_str() == "-" => true,
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Usage(format!("cannot read {}: {e}", p.display())))?;
            return Ok(from_json(&text, &p.display().to_string())?);
        }
        None => !flags_given && !std::io::stdin().is_terminal(),
    };
    if stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Usage(format!("cannot read stdin: {e}")))?;
        return Ok(from_json(&text, "stdin")?);
    }
    let need = |v: &Option<String>, flag: &str| {
        v.clone().ok_or_else(|| {
            Usage(format!(
                "{flag} is required (or give --file job.json, or the JSON on stdin)"
            ))
        })
    };
    let strategy = need(&args.strategy, "--strategy")?;
    let mut parameters = serde_json::Map::new();
    for p in &args.params {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| Usage(format!("--param {p:?}: expected NAME=VALUE")))?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.into()));
        parameters.insert(k.to_owned(), value);
    }
    Ok(StartRunnerRequest {
        user_id: UserId::new(need(&args.user, "--user")?),
        strategy_id: runfleet_client::ids::StrategyId::new(strategy.clone()),
        broker_id: runfleet_client::ids::BrokerId::new(args.broker.clone()),
        credentials: Credentials {
            api_key: args.broker_key.clone(),
            api_secret: args.broker_secret.clone(),
        },
        config: StrategyConfig {
            name: args.name.clone().unwrap_or(strategy),
            kind: need(&args.strategy_type, "--type")?,
            parameters,
            risk_management: None,
            instruments: args.instruments.clone(),
        },
    })
}

async fn start(client: &Client, out: Out, args: StartArgs) -> anyhow::Result<()> {
    let req = start_request(&args)?;
    let accepted = client.start(&req).await?;
    if !args.wait {
        return out.print(&accepted, || {
            format!("{} queued: {}", accepted.job_id, accepted.message)
        });
    }
    if !out.json {
        eprintln!("{} queued: {}", accepted.job_id, accepted.message);
    }
    let spinner = out.spinner(format!("waiting for {} to run", accepted.job_id));
    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    let runner = loop {
        let runner = client.runner(&accepted.job_id).await?;
        let status = runner.view.record().status;
        spinner.set_message(format!("{} is {}", accepted.job_id, status.as_str()));
        if status != JobStatus::Queued || Instant::now() >= deadline {
            break runner;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    spinner.finish_and_clear();
    let r = runner.view.record();
    match r.status {
        JobStatus::Running => out.print(&runner, || {
            format!(
                "{} running on {}",
                r.job_id,
                r.node_id.as_ref().map_or("?", |n| n.as_str())
            )
        }),
        JobStatus::Queued => Err(anyhow::anyhow!(
            "{} still queued after {} s (no free node?)",
            r.job_id,
            args.wait_secs
        )),
        other => {
            out.print(&runner, || show::runner(r))?;
            Err(anyhow::anyhow!(
                "{} is {} instead of running{}",
                r.job_id,
                other.as_str(),
                r.error
                    .as_deref()
                    .map_or(String::new(), |e| format!(": {e}"))
            ))
        }
    }
}

async fn stop(
    client: &Client,
    out: Out,
    job: JobId,
    mode: StopMode,
    wait_secs: u64,
) -> anyhow::Result<()> {
    let verb = match mode {
        StopMode::Flatten => "flattening",
        StopMode::Hold => "stopping (hold)",
    };
    let spinner = out.spinner(format!("{verb} {job}"));
    let outcome = client.stop(&job, mode).await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            spinner.finish_and_clear();
            return Err(e.into());
        }
    };
    match outcome {
        StopOutcome::Stopped(s) => {
            spinner.finish_and_clear();
            out.print(&s, || {
                format!(
                    "{job} {}: {}\npositions flattened: {}, still open: {}, PnL {}",
                    s.status.as_str(),
                    s.message,
                    s.flattened_positions,
                    s.positions.len(),
                    show::money(s.stats.total_pnl, &s.stats.currency)
                )
            })
        }
        StopOutcome::FlattenFailed(f) => {
            spinner.finish_and_clear();
            out.print(&f, || {
                format!(
                    "{job} {} but NOT flat: {}\npositions flattened: {}, still open:\n{}",
                    f.status.as_str(),
                    f.error.message.as_deref().unwrap_or("FLATTEN_FAILED"),
                    f.flattened_positions,
                    show::positions(&f.positions)
                )
            })?;
            // A 502 from the API: exit as a server error, with its code.
            Err(Failed {
                code: 6,
                message: "FLATTEN_FAILED: the runner stopped with positions still open".into(),
            }
            .into())
        }
        StopOutcome::Pending(p) => {
            // The node has not confirmed within the server's wait: watch the runner.
            spinner.set_message(format!("{verb} {job}: {}", p.message));
            let deadline = Instant::now() + Duration::from_secs(wait_secs);
            loop {
                let runner = client.runner(&job).await?;
                let r = runner.view.record();
                if r.status != JobStatus::Running {
                    spinner.finish_and_clear();
                    return out.print(&runner, || show::runner(r));
                }
                if Instant::now() >= deadline {
                    spinner.finish_and_clear();
                    return Err(anyhow::anyhow!(
                        "{job}: the stop was sent but not confirmed within {wait_secs} s"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

async fn events(client: &Client, out: Out, args: EventsArgs) -> anyhow::Result<()> {
    let job = args.job.map(JobId::new);
    let mut since = args.since.clone();
    if let Some(job) = &job {
        if since.is_none() {
            let history = client.runner_events(job).await?;
            if !args.follow {
                return out.print(&history, || show::events(&history.events));
            }
            if out.json {
                for e in &history.events {
                    println!("{}", serde_json::to_string(e)?);
                }
            } else {
                for e in &history.events {
                    println!("{}", show::event_line(e));
                }
            }
            since = history.events.last().map(|e| e.id.clone());
        } else if !args.follow {
            return Err(Usage("--since needs --follow".into()).into());
        }
    }
    let filter = EventFilter {
        user: args.user.map(UserId::new),
        job,
        last_event_id: since,
    };
    let mut stream = client.events(filter);
    let mut seen = 0;
    use futures::StreamExt;
    while let Some(item) = stream.next().await {
        match item? {
            StreamEvent::Runner(e) => {
                if out.json {
                    println!("{}", serde_json::to_string(&e)?);
                } else {
                    println!("{}", show::event_line(&e));
                }
                seen += 1;
            }
            StreamEvent::Gap(gap) => gap_line(out, &gap)?,
        }
        if args.limit.is_some_and(|l| seen >= l) {
            break;
        }
    }
    Ok(())
}

fn gap_line(out: Out, gap: &StreamGap) -> anyhow::Result<()> {
    if out.json {
        println!("{}", serde_json::json!({ "gap": gap }));
    } else {
        eprintln!(
            "-- gap: events after {} may be missing: {}",
            gap.last_event_id, gap.message
        );
    }
    Ok(())
}

fn config(
    c: ConfigCommand,
    path: Option<PathBuf>,
    url: Option<String>,
    key: Option<String>,
) -> anyhow::Result<()> {
    let path = path.ok_or_else(|| Usage("no config directory: give --config PATH".into()))?;
    let mut file = settings::load(Some(&path)).map_err(|e| Usage(format!("{e:#}")))?;
    match c {
        ConfigCommand::Set { server, api_key } => {
            if server.is_none() && api_key.is_none() {
                return Err(Usage("give --server and/or --api-key".into()).into());
            }
            if let Some(s) = server {
                Client::new(&s, None)?;
                file.url = Some(s);
            }
            if api_key.is_some() {
                file.key = api_key;
            }
            settings::save(&path, &file).context("saving the config file")?;
            println!("saved {}", path.display());
        }
        ConfigCommand::Show => {
            let from = if url.is_some() {
                "--url or RUNFLEET_URL"
            } else if file.url.is_some() {
                "the config file"
            } else {
                "the default"
            };
            let key_from = if key.is_some() {
                "--key or RUNFLEET_KEY"
            } else if file.key.is_some() {
                "the config file"
            } else {
                "none"
            };
            let r = settings::resolve(url, key, file);
            println!(
                "config file: {}\nurl: {} (from {from})\nkey: {}",
                path.display(),
                r.url,
                if r.key.is_some() {
                    format!("set (from {key_from})")
                } else {
                    "none".into()
                }
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> anyhow::Error {
        let body = format!(r#"{{"success":false,"error":{{"code":"c{status}","message":"m"}}}}"#);
        ClientError::Api {
            status,
            error: Box::new(serde_json::from_str::<ErrorBody>(&body).unwrap().error),
            retry_after: None,
        }
        .into()
    }

    #[test]
    fn exit_codes_are_the_documented_ones() {
        assert_eq!(exit_code(&api(403)), 3, "runner_limit_reached, forbidden");
        assert_eq!(exit_code(&api(400)), 3);
        assert_eq!(exit_code(&api(429)), 3);
        assert_eq!(exit_code(&api(404)), 4);
        assert_eq!(exit_code(&api(401)), 5);
        assert_eq!(exit_code(&api(408)), 6);
        assert_eq!(exit_code(&api(503)), 6);
        assert_eq!(exit_code(&api(500)), 6);
        assert_eq!(exit_code(&Usage("x".into()).into()), 2);
        let failed = Failed {
            code: 6,
            message: "m".into(),
        };
        assert_eq!(exit_code(&failed.into()), 6);
        assert_eq!(exit_code(&anyhow::anyhow!("other")), 1);
        // A usage error wrapped in context keeps its code.
        let wrapped = anyhow::Error::from(Usage("x".into())).context("while starting");
        assert_eq!(exit_code(&wrapped), 2);
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}

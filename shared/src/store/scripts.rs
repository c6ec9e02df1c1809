//! The store's Lua scripts, run as Redis Functions where the server has them (Redis 7+, Valkey)
//! and as EVAL scripts where it does not (Redis 6.2, some compatible services).
//!
//! Every script is the shared prelude (`lib.lua`: key names, context, clock, helpers) and its
//! own body. As an EVAL script, the prelude runs again on every call: it builds the key-name
//! and settings tables and a few dozen closures before the body's first command, which cost as
//! much Redis time as the admission's own work (docs/benchmarks.md). As a Function library the
//! prelude runs once, when the library is loaded; each call only sets its context (`begin`).
//! The two forms are made from the same text, so they cannot drift apart.
//!
//! The library's name and its functions' names carry a digest of its text: fleets running
//! different versions side by side (a rolling upgrade) each call their own functions and never
//! replace each other's. A call that finds no function (a new Redis, a restart without
//! persistence, a flush) loads the library and calls again; a server without FCALL switches the
//! store to EVAL for good.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{LazyLock, OnceLock};

use ::redis::aio::ConnectionLike;
use ::redis::{Cmd, FromRedisValue, RedisError, RedisResult, Script, ToRedisArgs};

use super::SCRIPT_PRELUDE;

/// The prelude's last line, which EVAL needs and the Function library must not have: the
/// library's functions each call `begin` with their own arguments.
const EVAL_BEGIN: &str = "begin(ARGV)\n";

/// One store script: a body that runs after the prelude.
#[derive(Debug)]
pub(crate) struct StoreScript {
    /// Its name in the library (after the library's digest).
    name: &'static str,
    body: &'static str,
    eval: OnceLock<Script>,
    function: OnceLock<String>,
}

impl StoreScript {
    pub(crate) const fn new(name: &'static str, body: &'static str) -> Self {
        Self {
            name,
            body,
            eval: OnceLock::new(),
            function: OnceLock::new(),
        }
    }

    /// The EVAL form: prelude, one newline, body.
    fn eval(&self) -> &Script {
        self.eval
            .get_or_init(|| Script::new(&eval_source(self.body)))
    }

    /// The function's name in the library.
    fn function(&self) -> &str {
        self.function
            .get_or_init(|| format!("{}_{}", LIBRARY.functions, self.name))
    }
}

/// The text of the EVAL script with body `body`: the prelude, one newline, the body (what any
/// Redis client may run, docs/redis-schema.md).
pub fn eval_source(body: &str) -> String {
    format!("{SCRIPT_PRELUDE}\n{body}")
}

macro_rules! scripts {
    ($($name:ident = $file:literal,)*) => {
        $(pub(crate) static $name: StoreScript =
            StoreScript::new(stringify!($name), include_str!(concat!("../scripts/", $file)));)*
        /// Every store script: what the library registers.
        static ALL: &[&StoreScript] = &[$(&$name),*];
    };
}

scripts! {
    ADMIT = "store_admit.lua",
    ADMIT_MANY = "store_admit_many.lua",
    CLAIM = "store_claim.lua",
    RENEW = "store_renew.lua",
    FINISH = "store_finish.lua",
    HAND_BACK = "store_hand_back.lua",
    STOP = "store_stop.lua",
    SWEEP = "store_sweep.lua",
    FAIL_LOST = "store_fail_lost.lua",
    EVENTS = "store_events.lua",
    GAUGES = "store_gauges.lua",
    PROMOTE = "store_promote.lua",
    RECONCILE = "store_reconcile.lua",
    ADD_KEY = "store_add_key.lua",
    REVOKE_KEY = "store_revoke_key.lua",
}

/// The Function library: every store script registered as a function.
struct Library {
    /// The library's source, with its `#!lua name=` header.
    code: String,
    /// The prefix of its functions' names: `runfleet_<digest>`.
    functions: String,
}

static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    let prelude = SCRIPT_PRELUDE
        .strip_suffix(EVAL_BEGIN)
        .expect("lib.lua ends with the EVAL form's `begin(ARGV)` line");
    let bodies: String = ALL
        .iter()
        .map(|s| {
            format!(
                "redis.register_function('@@_{}', function(_, args)\nbegin(args)\n{}\nend)\n",
                s.name, s.body
            )
        })
        .collect();
    let text = format!("{prelude}\n{bodies}");
    // The digest of the text names the library and its functions (12 hex digits of its SHA-1).
    let digest = Script::new(&text).get_hash().to_owned();
    let functions = format!("runfleet_{}", &digest[..12]);
    Library {
        code: format!(
            "#!lua name={functions}\n{}",
            text.replace("'@@_", &format!("'{functions}_"))
        ),
        functions,
    }
});

/// How this store runs its scripts: as functions until the server says it has none (0), then
/// with EVAL for good.
#[derive(Debug, Default)]
pub(crate) struct ScriptMode(AtomicU8);

const EVAL: u8 = 1;

impl ScriptMode {
    fn eval(&self) -> bool {
        self.0.load(Ordering::Relaxed) == EVAL
    }

    fn use_eval(&self) {
        if !self.eval() {
            tracing::info!("Redis has no FCALL: the store runs its scripts with EVAL");
        }
        self.0.store(EVAL, Ordering::Relaxed);
    }
}

/// One call of a store script with its arguments (the prelude's context first).
pub(crate) struct Call<'a> {
    script: &'static StoreScript,
    mode: &'a ScriptMode,
    /// The keys the call declares ([`crate::keys::Keys::route`]): a cluster routes it by them.
    keys: &'a [String],
    args: Vec<Vec<u8>>,
}

impl<'a> Call<'a> {
    pub(crate) fn new(
        script: &'static StoreScript,
        mode: &'a ScriptMode,
        keys: &'a [String],
    ) -> Self {
        Self {
            script,
            mode,
            keys,
            args: Vec::with_capacity(24),
        }
    }

    /// Appends an argument.
    pub(crate) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    fn fcall(&self) -> Cmd {
        let mut cmd = ::redis::cmd("FCALL");
        cmd.arg(self.script.function())
            .arg(self.keys.len())
            .arg(self.keys);
        for a in &self.args {
            cmd.arg(a.as_slice());
        }
        cmd
    }

    fn evalsha(&self) -> ::redis::ScriptInvocation<'static> {
        let mut inv = self.script.eval().prepare_invoke();
        for k in self.keys {
            inv.key(k);
        }
        for a in &self.args {
            inv.arg(a.as_slice());
        }
        inv
    }

    /// Runs the call: FCALL, loading the library first if the server has not got it, or EVAL
    /// on a server without functions (see [`run`]).
    pub(crate) async fn invoke_async<T: FromRedisValue, C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> RedisResult<T> {
        let reply = run(self.mode, &[self], conn).await?.pop();
        T::from_redis_value(reply.unwrap_or(Ok(::redis::Value::Nil))?).map_err(Into::into)
    }
}

/// Runs `calls` in one round trip (one pipeline), each its own atomic script call, and answers
/// each one's result in order (see [`run`]).
pub(crate) async fn invoke_all<T: FromRedisValue, C: ConnectionLike + Send>(
    mode: &ScriptMode,
    calls: &[Call<'_>],
    conn: &mut C,
) -> RedisResult<Vec<T>> {
    if calls.is_empty() {
        return Ok(Vec::new());
    }
    let calls: Vec<&Call<'_>> = calls.iter().collect();
    run(mode, &calls, conn)
        .await?
        .into_iter()
        .map(|r| r.and_then(|v| T::from_redis_value(v).map_err(Into::into)))
        .collect()
}

/// Runs `calls` (at least one) as functions, in one round trip, and answers each one's reply.
/// The calls that found no function (the library is not loaded: a new Redis, a restart
/// without persistence, a flush) are made again, once, after loading it; those that found no
/// functions at all (a Redis without them, or an ACL that forbids them) are made again with
/// EVAL, and the store uses EVAL from then on. A call that ran is never made twice.
async fn run<C: ConnectionLike + Send>(
    mode: &ScriptMode,
    calls: &[&Call<'_>],
    conn: &mut C,
) -> RedisResult<Vec<RedisResult<::redis::Value>>> {
    if mode.eval() {
        return evalsha_all(calls, conn).await;
    }
    let mut results = fcall_all(calls, conn).await?;
    let redo: Vec<usize> = (0..results.len())
        .filter(|&i| matches!(&results[i], Err(e) if function_missing(e) || no_functions(e)))
        .collect();
    if redo.is_empty() {
        return Ok(results);
    }
    let functions = !results
        .iter()
        .any(|r| matches!(r, Err(e) if no_functions(e)))
        && match load_library(conn).await {
            Ok(()) => true,
            Err(e) if no_functions(&e) => false,
            Err(e) => return Err(e),
        };
    let again: Vec<&Call<'_>> = redo.iter().map(|&i| calls[i]).collect();
    let redone = if functions {
        fcall_all(&again, conn).await?
    } else {
        mode.use_eval();
        evalsha_all(&again, conn).await?
    };
    for (i, r) in redo.into_iter().zip(redone) {
        results[i] = r;
    }
    Ok(results)
}

/// Runs `calls` with FCALL in one round trip: one command, or a pipeline.
async fn fcall_all<C: ConnectionLike + Send>(
    calls: &[&Call<'_>],
    conn: &mut C,
) -> RedisResult<Vec<RedisResult<::redis::Value>>> {
    if let [call] = calls {
        return Ok(vec![call.fcall().query_async(conn).await]);
    }
    let mut pipe = ::redis::pipe();
    pipe.ignore_errors();
    for c in calls {
        pipe.add_command(c.fcall());
    }
    pipe.query_async(conn).await
}

/// Runs `calls` (of one script) with EVALSHA in one round trip: one call (which loads the
/// script only if the server answers NOSCRIPT), or a pipeline that loads it first.
async fn evalsha_all<C: ConnectionLike + Send>(
    calls: &[&Call<'_>],
    conn: &mut C,
) -> RedisResult<Vec<RedisResult<::redis::Value>>> {
    if let [call] = calls {
        return Ok(vec![call.evalsha().invoke_async(conn).await]);
    }
    let mut pipe = ::redis::pipe();
    pipe.ignore_errors();
    pipe.load_script(calls[0].script.eval()).ignore();
    let invocations: Vec<_> = calls.iter().map(|c| c.evalsha()).collect();
    for inv in &invocations {
        pipe.invoke_script(inv);
    }
    pipe.query_async(conn).await
}

/// Loads the Function library (a library of the same name, the same text, is already there
/// when another process loaded it first: not an error).
async fn load_library<C: ConnectionLike + Send>(conn: &mut C) -> RedisResult<()> {
    let loaded: RedisResult<String> = ::redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(&LIBRARY.code)
        .query_async(conn)
        .await;
    match loaded {
        Ok(_) => Ok(()),
        Err(e) if e.detail().is_some_and(|d| d.contains("already exists")) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The server has no function of that name: the library is not loaded (yet, or any more).
fn function_missing(e: &RedisError) -> bool {
    e.detail().is_some_and(|d| d.contains("Function not found"))
}

/// The server has no Redis Functions (before Redis 7, some compatible services), or this
/// client may not use them (an ACL without `FCALL` or `FUNCTION`).
fn no_functions(e: &RedisError) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    (text.contains("unknown command") || text.contains("noperm"))
        && (text.contains("fcall") || text.contains("function"))
}

/// The library's source (for tests and the docs).
pub fn library_source() -> &'static str {
    &LIBRARY.code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_registers_every_script_under_its_digest() {
        let code = library_source();
        assert!(code.starts_with(&format!("#!lua name={}\n", LIBRARY.functions)));
        assert!(!code.contains("begin(ARGV)"), "the EVAL line is left out");
        for s in ALL {
            assert!(code.contains(&format!("'{}'", s.function())), "{}", s.name);
        }
        assert!(ADMIT.eval().get_hash().len() == 40);
        assert!(eval_source("return 1").ends_with("begin(ARGV)\n\nreturn 1"));
    }
}

//! The `market.*` settings as a file gives them: feed kind, replay file and speed, seed, and the
//! fill model in decimal basis points.

use runfleet_shared::config::{FeedKind, MarketSettings, Settings};
use rust_decimal_macros::dec;

fn load(name: &str, toml: &str) -> Result<Settings, String> {
    let dir = std::env::temp_dir().join(format!("runfleet-market-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("runfleet.toml");
    std::fs::write(&path, toml).unwrap();
    Settings::load(Some(&path)).map_err(|e| e.to_string())
}

#[test]
fn defaults_are_a_simulated_market_with_fees_and_slippage() {
    let m = MarketSettings::default();
    assert_eq!(m.feed, FeedKind::Simulated);
    assert_eq!(m.tick_ms, 100);
    assert_eq!((m.fee_bps, m.slippage_bps), (dec!(5), dec!(1)));
    let s = load("defaults", "").unwrap();
    assert_eq!(s.market, m, "defaults survive the layered load");
}

#[test]
fn a_file_sets_a_replay_market_and_a_decimal_fill_model() {
    let s = load(
        "replay",
        "[market]\nfeed = \"replay\"\nreplay_file = \"data/{index}.csv\"\nreplay_speed = 0\n\
         seed = 42\nfee_bps = 2.5\nslippage_bps = \"0.5\"\n",
    )
    .unwrap();
    assert_eq!(s.market.feed, FeedKind::Replay);
    assert_eq!(s.market.replay_file, "data/{index}.csv");
    assert_eq!((s.market.replay_speed, s.market.seed), (0, 42));
    assert_eq!(
        (s.market.fee_bps, s.market.slippage_bps),
        (dec!(2.5), dec!(0.5))
    );
}

#[test]
fn bad_market_settings_name_the_setting() {
    let e = load("nofile", "[market]\nfeed = \"replay\"\n").unwrap_err();
    assert!(e.contains("market.replay_file"), "{e}");
    let e = load("fee", "[market]\nfee_bps = -1\n").unwrap_err();
    assert!(e.contains("market.fee_bps"), "{e}");
    let e = load("slip", "[market]\nslippage_bps = 1001\n").unwrap_err();
    assert!(e.contains("market.slippage_bps"), "{e}");
    assert!(load("kind", "[market]\nfeed = \"live\"\n").is_err());
}

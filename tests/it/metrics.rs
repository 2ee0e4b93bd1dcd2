//! `/metrics` from the first scrape: every labelled series an alert may use exists at 0 before
//! its first event (one per record kind, per prompt outcome and per configured device), so
//! `rate()` and `increase()` see the first event.

use crate::harness::{Gateway, Store};

/// The value of `series` in a scrape, if the series is there at all.
fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn every_labelled_series_is_at_zero_on_the_first_scrape() {
    let store = Store::new();
    // Two configured devices, neither of them plugged in: nothing will ever happen on them.
    store.write_config("");
    store.append_config(&format!(
        "[[device]]\nid = \"register-1\"\nrole = \"register\"\ntransport = \"serial\"\n\
         station = \"till-1\"\nprofile = \"json-register\"\npath = \"{}\"\n",
        store.path("register").display()
    ));
    let gateway = Gateway::start(&store).await;
    let (code, scrape) = gateway.get("/metrics").await.expect("metrics answer");
    assert_eq!(code, 200);

    let mut zero = vec![
        "posgw_records_total{kind=\"scan\"}".to_owned(),
        "posgw_records_total{kind=\"sale\"}".to_owned(),
        "posgw_records_total{kind=\"attribution\"}".to_owned(),
    ];
    for outcome in ["opened", "answered", "skipped", "timeout"] {
        zero.push(format!("posgw_prompts_total{{outcome=\"{outcome}\"}}"));
    }
    for device in ["scanner-1", "register-1"] {
        zero.push(format!("posgw_bad_frames_total{{device=\"{device}\"}}"));
        zero.push(format!("posgw_device_connected{{device=\"{device}\"}}"));
    }
    for series in &zero {
        assert_eq!(value(&scrape, series), Some(0.0), "{series} in\n{scrape}");
    }
    // These count the start itself (and a device found missing), but exist all the same.
    for series in [
        "posgw_records_total{kind=\"device\"}",
        "posgw_records_total{kind=\"gateway\"}",
    ] {
        assert!(value(&scrape, series).is_some(), "{series} in\n{scrape}");
    }
    assert!(gateway.stop().await.success());
}

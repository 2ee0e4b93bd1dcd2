//! The engine against a real journal in a temporary folder.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use super::flow::tests::five_steps;
use super::*;

struct Store {
    dir: tempfile::TempDir,
    journal: JournalHandle,
    consult: ConsultHandle,
}

async fn store_with(flow: Flow) -> Store {
    let dir = tempfile::tempdir().unwrap();
    let journal = crate::journal::open_for_test(dir.path(), Duration::ZERO).await;
    let consult = spawn(config(flow), journal.clone(), dir.path())
        .await
        .unwrap();
    Store {
        dir,
        journal,
        consult,
    }
}

fn config(flow: Flow) -> ConsultConfig {
    ConsultConfig {
        flows: Flows::new(vec![flow]),
        customer_key: Some(CustomerKey::new(b"a test key of sixteen+ bytes".to_vec())),
    }
}

/// Every record in the journal, as JSON, in order.
async fn records(journal: &JournalHandle) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let batch = journal.read(after, 1000, 1 << 20).await.unwrap();
        let Some(last) = batch.last() else { return out };
        after = last.position;
        out.extend(
            batch
                .iter()
                .map(|record| serde_json::from_slice(&record.bytes).unwrap()),
        );
    }
}

fn of_kind<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|record| record["kind"] == kind)
        .collect()
}

/// A held scan whose delivery arrives on the receiver.
fn held(bytes: &[u8]) -> (HeldScan, mpsc::UnboundedReceiver<Vec<u8>>) {
    let (sent, delivered) = mpsc::unbounded_channel();
    let deliver: Deliver = Box::new(move |bytes: &[u8]| {
        let _ = sent.send(bytes.to_vec());
    });
    (HeldScan::new(bytes.to_vec(), deliver), delivered)
}

fn scan(station: &str, id: &str, held: Option<HeldScan>) -> ScanSeen {
    ScanSeen {
        station: station.into(),
        flow: "rx-5step".into(),
        scan_id: id.into(),
        sku: "6901234567892".into(),
        held,
    }
}

fn done() -> StepInput {
    StepInput::default()
}

fn value(value: &str) -> StepInput {
    StepInput {
        value: Some(value.into()),
        ..StepInput::default()
    }
}

fn skip(reason: &str) -> StepInput {
    StepInput {
        skip: Some(reason.into()),
        ..StepInput::default()
    }
}

#[tokio::test]
async fn five_steps_scan_and_sale_close_one_completed_record() {
    let store = store_with(five_steps()).await;
    let c = &store.consult;
    let opened = c
        .open("1", "rx-5step", Some("c-17".into()), None)
        .await
        .unwrap();
    assert_eq!(opened.state, "open");
    assert_eq!(opened.steps.len(), 5);
    c.step(&opened.id, "consult", done()).await.unwrap();
    let symptoms = StepInput {
        values: Some(vec!["失眠".into(), "心悸".into(), "失眠".into()]),
        clerk: Some("c-17".into()),
        ..StepInput::default()
    };
    let view = c.step(&opened.id, "symptoms", symptoms).await.unwrap();
    assert_eq!(
        view.steps[1].state.values,
        Some(vec!["失眠".into(), "心悸".into()])
    );
    c.scan(scan("1", "S/gw/e/7", None)).await;
    let linked = c
        .link_sale(SaleSeen {
            station: "1".into(),
            receipt: Some("R-1001".into()),
            insurance: vec![true],
        })
        .await;
    assert_eq!(linked.as_deref(), Some(opened.id.as_str()));
    let closed = c.step(&opened.id, "guidance", done()).await.unwrap();
    assert_eq!(closed.state, "completed");
    assert!(c.list(Some("1")).await.unwrap().is_empty());

    let records = records(&store.journal).await;
    let steps = of_kind(&records, "consultation_step");
    let keys: Vec<&str> = steps
        .iter()
        .map(|r| r["data"]["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["consult", "symptoms", "recommend", "insurance", "guidance"]
    );
    let [record] = of_kind(&records, "consultation")[..] else {
        panic!("one consultation record: {records:?}")
    };
    let data = &record["data"];
    assert_eq!(data["outcome"], "completed");
    assert_eq!(data["receipt"], "R-1001");
    assert_eq!(data["scans"], serde_json::json!(["S/gw/e/7"]));
    assert_eq!(data["steps"][2]["value"], "6901234567892");
    assert_eq!(data["steps"][3]["value"], "通过");
    assert!(data["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|step| step["at"].is_string()));
    assert_eq!(data["released_by"], Value::Null);
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_contract_errors() {
    let store = store_with(five_steps()).await;
    let c = &store.consult;
    assert!(matches!(
        c.open("1", "nope", None, None).await,
        Err(ConsultError::Invalid(_))
    ));
    let id = c.open("1", "rx-5step", None, None).await.unwrap().id;
    let refused = |result: Result<ConsultationView, ConsultError>| result.unwrap_err();
    assert!(matches!(
        refused(c.step("nope", "consult", done()).await),
        ConsultError::NotFound(_)
    ));
    assert!(matches!(
        refused(c.step(&id, "nope", done()).await),
        ConsultError::NotFound(_)
    ));
    // Free text never enters a record; only listed values and reasons do.
    assert!(matches!(
        refused(c.step(&id, "consult", value("张三 13800000000")).await),
        ConsultError::Invalid(_)
    ));
    assert!(matches!(
        refused(c.step(&id, "symptoms", value("头痛")).await),
        ConsultError::Invalid(_)
    ));
    assert!(matches!(
        refused(c.step(&id, "symptoms", done()).await),
        ConsultError::Invalid(_)
    ));
    assert!(matches!(
        refused(
            c.step(
                &id,
                "insurance",
                StepInput {
                    values: Some(vec!["通过".into(), "自费".into()]),
                    ..StepInput::default()
                }
            )
            .await
        ),
        ConsultError::Invalid(_)
    ));
    assert!(matches!(
        refused(c.step(&id, "consult", skip("不想说")).await),
        ConsultError::Invalid(_)
    ));
    assert!(matches!(
        refused(c.step(&id, "consult", skip("")).await),
        ConsultError::Invalid(_)
    ));
    // Nothing refused was recorded.
    assert!(of_kind(&records(&store.journal).await, "consultation_step").is_empty());
    let closed = c.close(&id, false).await.unwrap();
    assert_eq!(closed.state, "incomplete");
    assert!(matches!(
        refused(c.step(&id, "consult", done()).await),
        ConsultError::Closed(_)
    ));
    assert!(matches!(
        refused(c.close(&id, true).await),
        ConsultError::Closed(_)
    ));
}

#[tokio::test]
async fn a_held_scan_goes_on_once_the_steps_before_the_hold_are_settled() {
    let store = store_with(five_steps()).await;
    let c = &store.consult;
    let (frame, mut delivered) = held(b"]E06901234567892\r\n");
    // The scan opens the consultation; nothing is settled, so it is held.
    c.scan(scan("1", "S/gw/e/1", Some(frame))).await;
    let open = c.list(Some("1")).await.unwrap();
    let [view] = &open[..] else {
        panic!("one open: {open:?}")
    };
    assert!(view.held.is_some());
    assert!(delivered.try_recv().is_err());
    c.step(&view.id, "consult", done()).await.unwrap();
    assert!(
        delivered.try_recv().is_err(),
        "released before 症状记录 was settled"
    );
    let after = c
        .step(&view.id, "symptoms", skip("复购老客"))
        .await
        .unwrap();
    // Released before the answer: byte for byte.
    assert_eq!(delivered.try_recv().unwrap(), b"]E06901234567892\r\n");
    assert_eq!(after.released_by, Some(ReleasedBy::Steps));
    assert!(after.held.is_none());
    assert!(after.held_ms.is_some());
    // A second box of the same product at the same counter is not held again.
    let (again, mut again_delivered) = held(b"6901234567892\r");
    c.scan(scan("1", "S/gw/e/2", Some(again))).await;
    c.list(None).await.unwrap();
    assert_eq!(again_delivered.try_recv().unwrap(), b"6901234567892\r");
}

#[tokio::test]
async fn a_held_scan_goes_on_at_the_hold_timeout_and_the_record_says_so() {
    let mut flow = five_steps();
    flow.hold_timeout = Duration::from_millis(100);
    let store = store_with(flow).await;
    let c = &store.consult;
    let (frame, mut delivered) = held(b"6901234567892\r");
    c.scan(scan("1", "S/gw/e/1", Some(frame))).await;
    let (_, mut events) = c.subscribe().await.unwrap();
    let bytes = tokio::time::timeout(Duration::from_secs(10), delivered.recv())
        .await
        .expect("released by the timeout")
        .unwrap();
    assert_eq!(bytes, b"6901234567892\r");
    let ConsultEvent::Changed(view) = events.recv().await.unwrap();
    assert_eq!(view.released_by, Some(ReleasedBy::Timeout));
    assert!(view.held_ms.unwrap() >= 100);
    let closed = c.close(&view.id, true).await.unwrap();
    assert_eq!(closed.state, "abandoned");
    let records = records(&store.journal).await;
    let [record] = of_kind(&records, "consultation")[..] else {
        panic!()
    };
    assert_eq!(record["data"]["released_by"], "timeout");
    assert_eq!(record["data"]["outcome"], "abandoned");
}

#[tokio::test]
async fn a_consultation_open_past_its_timeout_closes_as_abandoned() {
    let mut flow = five_steps();
    flow.timeout = Duration::from_millis(50);
    let store = store_with(flow).await;
    let (_, mut events) = store.consult.subscribe().await.unwrap();
    let id = store
        .consult
        .open("1", "rx-5step", None, None)
        .await
        .unwrap()
        .id;
    loop {
        let ConsultEvent::Changed(view) =
            tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .expect("closed by the timeout")
                .unwrap();
        if view.id == id && view.state != "open" {
            assert_eq!(view.state, "abandoned");
            break;
        }
    }
}

#[tokio::test]
async fn open_consultations_survive_a_restart_and_a_held_scan_is_recorded_as_lost() {
    let store = store_with(five_steps()).await;
    // Its deliverer does nothing: this engine "dies" with the scan held.
    let frame = HeldScan::new(b"6901234567892\r".to_vec(), Box::new(|_: &[u8]| {}));
    store.consult.scan(scan("1", "S/gw/e/1", Some(frame))).await;
    let id = store.consult.list(None).await.unwrap()[0].id.clone();
    store.consult.step(&id, "consult", done()).await.unwrap();
    // A crash: the state file as it is now is what the next start finds.
    let saved = std::fs::read(store.dir.path().join(STATE_FILE)).unwrap();
    // The old engine stops (its last save done) before the crash-time file is put back, so
    // two engines never write the same folder at once, as in production.
    store.consult.shutdown().await;
    std::fs::write(store.dir.path().join(STATE_FILE), saved).unwrap();

    let again = spawn(
        config(five_steps()),
        store.journal.clone(),
        store.dir.path(),
    )
    .await
    .unwrap();
    let open = again.list(Some("1")).await.unwrap();
    let [view] = &open[..] else {
        panic!("restored: {open:?}")
    };
    assert_eq!(view.id, id);
    assert!(view.steps[0].state.settled());
    assert_eq!(view.scans, ["S/gw/e/1"]);
    assert_eq!(view.released_by, Some(ReleasedBy::Restart));
    assert!(view.held.is_none());
    // It goes on where it was.
    let view = again
        .step(
            &id,
            "symptoms",
            StepInput {
                values: Some(vec!["胸闷".into()]),
                ..StepInput::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(view.steps[1].state.values, Some(vec!["胸闷".into()]));
}

#[tokio::test]
async fn a_member_id_becomes_a_reference_and_nothing_else() {
    let store = store_with(five_steps()).await;
    let view = store
        .consult
        .open("1", "rx-5step", None, Some("M-88001234"))
        .await
        .unwrap();
    let reference = view.customer.clone().unwrap();
    assert_eq!(reference.len(), 32);
    store.consult.close(&view.id, true).await.unwrap();
    let records = records(&store.journal).await;
    assert_eq!(
        of_kind(&records, "consultation")[0]["data"]["customer"],
        reference.as_str()
    );
    let everything = serde_json::to_string(&records).unwrap();
    assert!(!everything.contains("88001234"));

    let without_key = {
        let dir = tempfile::tempdir().unwrap();
        let journal = crate::journal::open_for_test(dir.path(), Duration::ZERO).await;
        let mut config = config(five_steps());
        config.customer_key = None;
        let consult = spawn(config, journal, dir.path()).await.unwrap();
        consult
            .open("1", "rx-5step", None, Some("M-88001234"))
            .await
    };
    assert!(matches!(without_key, Err(ConsultError::Invalid(_))));
}

/// The state file cannot be replaced from now on (its temporary name is taken by a folder).
fn break_state_saves(store: &Store) {
    std::fs::create_dir(store.dir.path().join(STATE_FILE).with_extension("tmp")).unwrap();
}

#[tokio::test]
async fn an_expiry_whose_state_save_fails_still_closes_and_the_engine_goes_on() {
    let mut flow = five_steps();
    flow.timeout = Duration::from_millis(100);
    let store = store_with(flow).await;
    let (_, mut events) = store.consult.subscribe().await.unwrap();
    let id = store
        .consult
        .open("1", "rx-5step", None, None)
        .await
        .unwrap()
        .id;
    break_state_saves(&store);
    loop {
        let ConsultEvent::Changed(view) =
            tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .expect("closed by the timeout")
                .unwrap();
        if view.id == id && view.state != "open" {
            break;
        }
    }
    // The engine is still there, the consultation is gone and its record written once.
    let open = store.consult.list(None).await.expect("the engine goes on");
    assert!(open.is_empty(), "{open:?}");
    let records = records(&store.journal).await;
    assert_eq!(of_kind(&records, "consultation").len(), 1);
}

#[tokio::test]
async fn a_scanner_streaming_the_flow_product_grows_neither_memory_nor_the_state_file() {
    let store = store_with(five_steps()).await;
    let c = &store.consult;
    let scans = 500;
    let mut deliveries = Vec::new();
    for i in 0..scans {
        let (frame, delivered) = held(b"6901234567892\r");
        c.scan(scan("1", &format!("S/gw/e/{i}"), Some(frame))).await;
        deliveries.push(delivered);
    }
    let [view] = &c.list(None).await.unwrap()[..] else {
        panic!("one consultation")
    };
    assert!(view.scans.len() <= 64, "{} scan ids kept", view.scans.len());
    assert_eq!(view.scans.len() as u64 + view.scans_more, scans as u64);
    let state = std::fs::metadata(store.dir.path().join(STATE_FILE)).unwrap();
    assert!(
        state.len() < 16 * 1024,
        "state file of {} bytes",
        state.len()
    );
    // Only a few wait; the rest went on at once (none is swallowed).
    let waiting = deliveries
        .iter_mut()
        .map(|delivered| delivered.try_recv().is_err())
        .filter(|&waits| waits)
        .count();
    assert!(waiting <= 16, "{waiting} scans held");
    let closed = c.close(&view.id, true).await.unwrap();
    assert_eq!(closed.scans_more, view.scans_more);
    let records = records(&store.journal).await;
    assert_eq!(
        of_kind(&records, "consultation")[0]["data"]["scans_more"],
        view.scans_more
    );
    let late = deliveries
        .iter_mut()
        .map(|delivered| delivered.try_recv().is_ok())
        .filter(|&went| went)
        .count();
    assert_eq!(late, waiting, "every held scan went on at the close");
}

fn sale(receipt: &str) -> SaleSeen {
    SaleSeen {
        station: "1".into(),
        receipt: Some(receipt.into()),
        insurance: Vec::new(),
    }
}

#[tokio::test]
async fn a_scan_after_the_sale_opens_a_new_consultation_and_is_held_again() {
    let store = store_with(five_steps()).await;
    let c = &store.consult;
    c.scan(scan("1", "S/gw/e/1", None)).await;
    let first = c.list(None).await.unwrap()[0].id.clone();
    c.step(&first, "consult", done()).await.unwrap();
    c.step(&first, "symptoms", skip("复购老客")).await.unwrap();
    assert_eq!(c.link_sale(sale("R-1")).await.as_deref(), Some(&*first));
    // 用药指导 still open: the first consultation stays. The next customer's box is scanned.
    let (frame, mut delivered) = held(b"6901234567892\r");
    c.scan(scan("1", "S/gw/e/2", Some(frame))).await;
    let open = c.list(None).await.unwrap();
    assert_eq!(open.len(), 2, "{open:?}");
    assert_eq!(open[0].scans, ["S/gw/e/1"]);
    assert_eq!(open[1].scans, ["S/gw/e/2"]);
    assert!(open[1].held.is_some());
    assert!(
        delivered.try_recv().is_err(),
        "not held for the new customer"
    );
}

#[tokio::test]
async fn a_sale_links_to_the_consultation_that_scanned_last() {
    let store = store_with(five_steps()).await;
    let c = &store.consult;
    // One left open by a customer who did not buy; the clerk opens another for the next one.
    let stale = c.open("1", "rx-5step", None, None).await.unwrap().id;
    c.scan(scan("1", "S/gw/e/1", None)).await;
    let current = c.open("1", "rx-5step", None, None).await.unwrap().id;
    c.scan(scan("1", "S/gw/e/2", None)).await;
    let open = c.list(None).await.unwrap();
    assert_eq!(open[1].id, current);
    assert_eq!(open[1].scans, ["S/gw/e/2"]);
    assert_eq!(
        c.link_sale(sale("R-2")).await.as_deref(),
        Some(&*current),
        "not the stale {stale}"
    );
}

#[tokio::test]
async fn a_durable_step_is_answered_as_done_even_when_the_state_file_cannot_be_saved() {
    let store = store_with(five_steps()).await;
    let c = &store.consult;
    let id = c.open("1", "rx-5step", None, None).await.unwrap().id;
    break_state_saves(&store);
    // The record is durable: the answer is 200, so nobody sends the step again.
    let view = c
        .step(&id, "consult", done())
        .await
        .expect("answered as done");
    assert!(view.steps[0].state.settled());
    let opened = c
        .open("1", "rx-5step", None, None)
        .await
        .expect("opened anyway");
    assert_eq!(c.list(Some("1")).await.unwrap().len(), 2, "{opened:?}");
    let records = records(&store.journal).await;
    assert_eq!(
        of_kind(&records, "consultation_step").len(),
        1,
        "recorded once"
    );
}

#[tokio::test]
async fn closing_a_consultation_that_holds_a_scan_records_it_then_lets_the_scan_go() {
    let store = store_with(five_steps()).await;
    let c = &store.consult;
    let (frame, mut delivered) = held(b"6901234567892\r");
    c.scan(scan("1", "S/gw/e/1", Some(frame))).await;
    let id = c.list(Some("1")).await.unwrap()[0].id.clone();
    assert!(delivered.try_recv().is_err(), "held");
    let closed = c.close(&id, true).await.unwrap();
    assert_eq!(closed.released_by, Some(ReleasedBy::Closed));
    assert_eq!(delivered.try_recv().unwrap(), b"6901234567892\r");
    let records = records(&store.journal).await;
    let [record] = of_kind(&records, "consultation")[..] else {
        panic!("one consultation record")
    };
    assert_eq!(record["data"]["released_by"], "closed");
    assert!(record["data"]["held_ms"].is_u64());
}

//! Consultation steps that POS software records over the channel (the parent module's "Steps and
//! acknowledgements"): parsing, the station check, the redelivery memory.

use std::collections::VecDeque;

use rumqttc::Publish;
use serde::Deserialize;

use super::{string_field, About, Verdict, TAKEN_MEMORY};
use crate::consult::{ConsultError, ConsultHandle, StepInput};

/// Longest clerk id, in characters: the local API's limit.
const MAX_CLERK: usize = 64;

/// A step as POS software publishes it: the local API's step body plus what it is for.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct StepMessage {
    /// The consultation's id.
    consultation: String,
    /// The step's key.
    step: String,
    /// One value of the step's `choose` list.
    value: Option<String>,
    /// Several values of a `multi` step's list.
    values: Option<Vec<String>>,
    /// Skip, with a reason from the flow's `skip_reasons`.
    skip: Option<String>,
    /// Who, when the POS knows.
    clerk: Option<String>,
}

/// Parses a step payload; a malformed one is refused, naming what it could read.
fn parse_step(payload: &[u8]) -> Result<StepMessage, Verdict> {
    serde_json::from_slice::<StepMessage>(payload).map_err(|error| Verdict::Refused {
        about: About::Step {
            consultation: string_field(payload, "consultation"),
            step: string_field(payload, "step"),
        },
        error: format!(
            "malformed step ({error}); expected {{\"consultation\":\"…\",\"step\":\"…\"}} with \"value\", \"values\" or \"skip\" as the step needs, and \"clerk\" optional"
        ),
    })
}

/// A clerk id as the local API takes it: trimmed, blank means none, at most [`MAX_CLERK`]
/// characters.
fn clerk(clerk: Option<String>) -> Result<Option<String>, String> {
    let Some(clerk) = clerk else { return Ok(None) };
    let clerk = clerk.trim();
    if clerk.chars().count() > MAX_CLERK {
        return Err(format!("clerk is longer than {MAX_CLERK} characters"));
    }
    Ok((!clerk.is_empty()).then(|| clerk.to_owned()))
}

/// Takes one step published on `station`'s step topic.
pub(super) async fn take_step(
    consult: &ConsultHandle,
    taken: &mut Taken,
    station: &str,
    publish: &Publish,
) -> Verdict {
    let message = match parse_step(&publish.payload) {
        Ok(message) => message,
        Err(refused) => return refused,
    };
    let about = About::Step {
        consultation: Some(message.consultation.clone()),
        step: Some(message.step.clone()),
    };
    let refused = |error: String| Verdict::Refused {
        about: about.clone(),
        error,
    };
    let unavailable = |error: ConsultError| Verdict::Later {
        about: about.clone(),
        error: error.to_string(),
    };
    let clerk = match clerk(message.clerk) {
        Ok(clerk) => clerk,
        Err(error) => return refused(error),
    };
    let input = StepInput {
        value: message.value,
        values: message.values,
        skip: message.skip,
        clerk,
    };
    let (id, key) = (&message.consultation, &message.step);
    if publish.dup && taken.contains(id, key, &input) {
        tracing::debug!(consultation = %id, step = %key, "mqtt consultation step delivered again after it was taken");
        return Verdict::Taken;
    }
    // A consultation never changes station, so this check cannot go stale before the step.
    match consult.list(None).await {
        Ok(open) => {
            if let Some(view) = open.iter().find(|view| view.id == *id) {
                if view.station != station {
                    return refused(format!(
                        "consultation '{id}' is at station '{}', not '{station}'",
                        view.station
                    ));
                }
            }
            // Not open: the step below says whether it is unknown or closed.
        }
        Err(error) => return unavailable(error),
    }
    match consult.step(id, key, input.clone()).await {
        Ok(_) => {
            taken.remember(id, key, input);
            Verdict::Taken
        }
        Err(error @ ConsultError::Unavailable(_)) => unavailable(error),
        Err(error) => refused(error.to_string()),
    }
}

/// The last [`TAKEN_MEMORY`] steps taken, to tell a redelivery from a new step.
#[derive(Debug, Default)]
pub(super) struct Taken {
    /// (consultation, step, input), oldest first.
    steps: VecDeque<(String, String, StepInput)>,
}

impl Taken {
    fn remember(&mut self, consultation: &str, step: &str, input: StepInput) {
        if self.steps.len() >= TAKEN_MEMORY {
            self.steps.pop_front();
        }
        self.steps
            .push_back((consultation.to_owned(), step.to_owned(), input));
    }

    fn contains(&self, consultation: &str, step: &str, input: &StepInput) -> bool {
        self.steps
            .iter()
            .any(|(c, s, i)| c == consultation && s == step && i == input)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rumqttc::QoS;
    use serde_json::json;

    use super::*;
    use crate::consult::{ConsultConfig, Flows};
    use crate::journal::JournalHandle;

    #[test]
    fn steps_parse_and_malformed_ones_say_why() {
        assert_eq!(
            parse_step(
                r#"{"consultation":"c1","step":"symptoms","values":["失眠"],"clerk":"c-17"}"#
                    .as_bytes()
            ),
            Ok(StepMessage {
                consultation: "c1".into(),
                step: "symptoms".into(),
                value: None,
                values: Some(vec!["失眠".into()]),
                skip: None,
                clerk: Some("c-17".into()),
            })
        );
        let skip =
            parse_step(r#"{"consultation":"c1","step":"guidance","skip":"复购老客"}"#.as_bytes())
                .expect("a skip");
        assert_eq!(skip.skip.as_deref(), Some("复购老客"));

        let refused = |payload: &[u8]| match parse_step(payload) {
            Err(Verdict::Refused { about, error }) => (about, error),
            other => panic!("{other:?}"),
        };
        let (about, error) = refused(br#"{"consultation":"c1","step":"consult","vaule":"x"}"#);
        assert_eq!(
            about,
            About::Step {
                consultation: Some("c1".into()),
                step: Some("consult".into())
            }
        );
        assert!(
            error.contains("vaule"),
            "unknown fields are refused: {error}"
        );
        let (about, error) = refused(br#"{"consultation":"c1"}"#);
        assert_eq!(
            about,
            About::Step {
                consultation: Some("c1".into()),
                step: None
            }
        );
        assert!(error.starts_with("malformed step"), "{error}");
        for garbage in [
            &b"{not json"[..],
            b"\xff\xfe",
            b"[1,2]",
            br#"{"consultation":7}"#,
        ] {
            assert_eq!(
                refused(garbage).0,
                About::Step {
                    consultation: None,
                    step: None
                }
            );
        }
    }

    #[test]
    fn clerks_are_trimmed_and_bounded_like_the_local_api() {
        assert_eq!(clerk(None), Ok(None));
        assert_eq!(clerk(Some("  ".into())), Ok(None));
        assert_eq!(clerk(Some(" c-17 ".into())), Ok(Some("c-17".into())));
        assert_eq!(clerk(Some("店".repeat(64))), Ok(Some("店".repeat(64))));
        assert!(clerk(Some("店".repeat(65))).is_err());
    }

    #[test]
    fn taken_steps_are_remembered_up_to_the_limit() {
        let input = |value: &str| StepInput {
            value: Some(value.into()),
            ..StepInput::default()
        };
        let mut taken = Taken::default();
        for i in 0..=TAKEN_MEMORY {
            taken.remember(&format!("c{i}"), "insurance", input("通过"));
        }
        assert!(
            !taken.contains("c0", "insurance", &input("通过")),
            "the oldest is forgotten"
        );
        assert!(taken.contains("c1", "insurance", &input("通过")));
        assert!(!taken.contains("c1", "insurance", &input("自费")));
        assert!(!taken.contains("c1", "guidance", &input("通过")));
    }

    /// An engine on a journal in `dir` with the five-step flow.
    async fn engine(dir: &std::path::Path) -> (ConsultHandle, JournalHandle) {
        let journal = crate::journal::open_for_test(dir, Duration::ZERO).await;
        let consult = crate::consult::spawn(
            ConsultConfig {
                flows: Flows::new(vec![crate::consult::test_flow()]),
                customer_key: None,
            },
            journal.clone(),
            dir,
        )
        .await
        .expect("engine");
        (consult, journal)
    }

    /// How many `consultation_step` records the journal holds.
    async fn step_records(journal: &JournalHandle) -> usize {
        let records = journal.read(0, 1000, 1 << 20).await.expect("read");
        records
            .iter()
            .filter(|record| {
                serde_json::from_slice::<serde_json::Value>(&record.bytes).unwrap()["kind"]
                    == "consultation_step"
            })
            .count()
    }

    fn publish(body: serde_json::Value, dup: bool) -> Publish {
        let mut publish = Publish::new(
            "posgw/S/till-1/consultation/step",
            QoS::AtLeastOnce,
            body.to_string(),
        );
        publish.dup = dup;
        publish
    }

    #[tokio::test]
    async fn verdicts_for_good_bad_repeated_and_misdirected_steps() {
        let dir = tempfile::tempdir().unwrap();
        let (consult, journal) = engine(dir.path()).await;
        let id = consult
            .open("till-1", "rx-5step", None, None)
            .await
            .expect("open")
            .id;
        let mut taken = Taken::default();
        let about = |step: &str| About::Step {
            consultation: Some(id.clone()),
            step: Some(step.into()),
        };
        let insurance =
            |value: &str| json!({"consultation": id, "step": "insurance", "value": value});

        let unknown = take_step(
            &consult,
            &mut taken,
            "till-1",
            &publish(json!({"consultation": "nosuch", "step": "consult"}), false),
        )
        .await;
        assert_eq!(
            unknown,
            Verdict::Refused {
                about: About::Step {
                    consultation: Some("nosuch".into()),
                    step: Some("consult".into())
                },
                error: "no consultation 'nosuch'".into()
            }
        );
        let not_offered = take_step(
            &consult,
            &mut taken,
            "till-1",
            &publish(insurance("刷脸"), false),
        )
        .await;
        assert!(
            matches!(&not_offered, Verdict::Refused { about: a, error } if *a == about("insurance") && error.contains("one of: 通过")),
            "{not_offered:?}"
        );
        // The right consultation on another station's topic: refused, nothing recorded.
        let elsewhere = take_step(
            &consult,
            &mut taken,
            "till-2",
            &publish(insurance("自费"), false),
        )
        .await;
        assert_eq!(
            elsewhere,
            Verdict::Refused {
                about: about("insurance"),
                error: format!("consultation '{id}' is at station 'till-1', not 'till-2'")
            }
        );
        assert_eq!(step_records(&journal).await, 0);

        let good = take_step(
            &consult,
            &mut taken,
            "till-1",
            &publish(insurance("自费"), false),
        )
        .await;
        assert_eq!(good, Verdict::Taken);
        assert_eq!(step_records(&journal).await, 1);
        // The broker's redelivery (DUP) of a taken step: acknowledged, not recorded again.
        let again = take_step(
            &consult,
            &mut taken,
            "till-1",
            &publish(insurance("自费"), true),
        )
        .await;
        assert_eq!(again, Verdict::Taken);
        assert_eq!(step_records(&journal).await, 1);
        // The same step published anew (no DUP) is a new step.
        let anew = take_step(
            &consult,
            &mut taken,
            "till-1",
            &publish(insurance("自费"), false),
        )
        .await;
        assert_eq!(anew, Verdict::Taken);
        assert_eq!(step_records(&journal).await, 2);

        // Closed: refused.
        consult.close(&id, true).await.expect("close");
        let closed = take_step(
            &consult,
            &mut taken,
            "till-1",
            &publish(insurance("通过"), false),
        )
        .await;
        assert_eq!(
            closed,
            Verdict::Refused {
                about: about("insurance"),
                error: format!("consultation '{id}' is already closed")
            }
        );

        // A stopped engine is not a refusal: the step must come again.
        consult.shutdown().await;
        let later = take_step(
            &consult,
            &mut taken,
            "till-1",
            &publish(insurance("通过"), false),
        )
        .await;
        assert!(
            matches!(&later, Verdict::Later { about: a, .. } if *a == about("insurance")),
            "{later:?}"
        );
        assert_eq!(step_records(&journal).await, 2);
    }
}

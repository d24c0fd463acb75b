//! How an event changes an incident: a pure function of the incident as it
//! is and what the event says, so the rules can be read and tested in one
//! place.

use super::rows::IncidentRow;

/// The state an incident ends in.
const RESOLVED: &str = "resolved";

/// The fields of an incident that events change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IncidentFields {
    pub incident_type: Option<String>,
    pub title: Option<String>,
    pub state: String,
    pub severity: Option<String>,
    pub url: Option<String>,
    pub owner: Option<String>,
    pub source_status: Option<String>,
}

impl IncidentFields {
    /// A new incident, as its first event describes it (open unless the
    /// event says otherwise).
    pub fn opened(row: &IncidentRow) -> Self {
        Self {
            incident_type: None,
            title: None,
            state: "open".to_owned(),
            severity: None,
            url: None,
            owner: None,
            source_status: None,
        }
        .apply(row)
    }

    /// The incident after `row`:
    /// - a field the event leaves NULL keeps its value; one it names in
    ///   `cleared_columns` becomes NULL;
    /// - type and title are set once, by the first event that gives them (an
    ///   opening); updates never redefine them;
    /// - a resolution stands: a later non-resolved state moves a resolved
    ///   incident back only when the event `reopens` it, so a late
    ///   acknowledgement cannot reopen it. The source's status moves with
    ///   the state.
    pub fn apply(&self, row: &IncidentRow) -> Self {
        let cleared = |column: &str| row.cleared.iter().any(|c| c == column);
        let set = |new: &Option<String>, old: &Option<String>, column: &str| {
            if cleared(column) {
                None
            } else {
                new.clone().or_else(|| old.clone())
            }
        };
        let (state, source_status) = match &row.state {
            Some(next) if self.state != RESOLVED || next == RESOLVED || row.reopens => (
                next.clone(),
                row.source_status
                    .clone()
                    .or_else(|| self.source_status.clone()),
            ),
            Some(_) => (self.state.clone(), self.source_status.clone()),
            None => (
                self.state.clone(),
                row.source_status
                    .clone()
                    .or_else(|| self.source_status.clone()),
            ),
        };
        Self {
            incident_type: self
                .incident_type
                .clone()
                .or_else(|| row.incident_type.clone()),
            title: self.title.clone().or_else(|| row.title.clone()),
            state,
            severity: set(&row.severity, &self.severity, "severity"),
            url: set(&row.url, &self.url, "url"),
            owner: set(&row.owner, &self.owner, "owner"),
            source_status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(state: Option<&str>, status: Option<&str>) -> IncidentRow {
        IncidentRow {
            source_system: "monte_carlo".into(),
            external_id: "mc-1".into(),
            state: state.map(Into::into),
            source_status: status.map(Into::into),
            ..IncidentRow::default()
        }
    }

    #[test]
    fn an_opening_sets_type_and_title_and_updates_keep_them() {
        let open = IncidentRow {
            incident_type: Some("anomaly".into()),
            title: Some("anomaly on a.b.c".into()),
            ..event(None, None)
        };
        let incident = IncidentFields::opened(&open);
        assert_eq!(
            (incident.state.as_str(), incident.title.as_deref()),
            ("open", Some("anomaly on a.b.c"))
        );
        let acked = incident.apply(&event(Some("acknowledged"), Some("investigating")));
        assert_eq!(acked.title, incident.title);
        assert_eq!(acked.incident_type.as_deref(), Some("anomaly"));
        let reopened_as_new = acked.apply(&IncidentRow {
            incident_type: Some("other".into()),
            title: Some("other".into()),
            ..event(None, None)
        });
        assert_eq!(
            reopened_as_new, acked,
            "an update repeating an opening redefines nothing"
        );
        assert_eq!(
            (acked.state.as_str(), acked.source_status.as_deref()),
            ("acknowledged", Some("investigating"))
        );
    }

    #[test]
    fn a_resolution_stands_against_a_late_acknowledgement_but_not_an_explicit_reopening() {
        let fixed = IncidentFields::opened(&event(None, None))
            .apply(&event(Some("resolved"), Some("fixed")));
        let late_ack = fixed.apply(&event(Some("acknowledged"), Some("investigating")));
        assert_eq!(late_ack, fixed, "a late acknowledgement changes nothing");
        let reopened = fixed.apply(&IncidentRow {
            reopens: true,
            ..event(Some("acknowledged"), Some("work_in_progress"))
        });
        assert_eq!(
            (reopened.state.as_str(), reopened.source_status.as_deref()),
            ("acknowledged", Some("work_in_progress"))
        );
        let false_positive = reopened.apply(&event(Some("resolved"), Some("false_positive")));
        assert_eq!(
            false_positive.source_status.as_deref(),
            Some("false_positive")
        );
    }

    #[test]
    fn severity_and_owner_are_set_kept_and_cleared() {
        let marked = IncidentFields::opened(&event(None, None)).apply(&IncidentRow {
            severity: Some("SEV-1".into()),
            ..event(None, None)
        });
        let owned = marked.apply(&IncidentRow {
            owner: Some("dana@acme.example".into()),
            ..event(None, None)
        });
        assert_eq!(
            (owned.severity.as_deref(), owned.owner.as_deref()),
            (Some("SEV-1"), Some("dana@acme.example"))
        );
        let unmarked = owned.apply(&IncidentRow {
            cleared: vec!["severity".into()],
            ..event(None, None)
        });
        assert_eq!(
            (unmarked.severity, unmarked.owner.as_deref()),
            (None, Some("dana@acme.example"))
        );
    }
}

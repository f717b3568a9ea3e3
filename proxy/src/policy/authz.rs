//! Authorization rules: the first rule whose principal matches decides; when no
//! rule matches, `defaultAction` (Deny unless set) applies.

use std::net::IpAddr;

use meshgate_crds::policy::{AuthorizationAction, ClaimRequirement};

use super::ipfilter::CidrSet;
use super::Claims;

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    allow: bool,
    cidrs: CidrSet,
    consumers: Vec<String>,
    claims: Vec<ClaimRequirement>,
}

/// What authorization needs to know about the caller.
pub struct Caller<'a> {
    pub client: IpAddr,
    pub consumer: Option<&'a str>,
    pub claims: Option<&'a Claims>,
}

impl Rule {
    /// Every condition given must hold.
    fn matches(&self, caller: &Caller<'_>) -> bool {
        (self.cidrs.is_empty() || self.cidrs.contains(caller.client))
            && (self.consumers.is_empty()
                || caller
                    .consumer
                    .is_some_and(|c| self.consumers.iter().any(|x| x == c)))
            && (self.claims.is_empty()
                || caller.claims.is_some_and(|claims| {
                    self.claims
                        .iter()
                        .all(|r| claims.matches(&r.name, &r.values))
                }))
    }
}

/// Compiled `authorization`.
#[derive(Debug, Clone)]
pub struct Authorization {
    rules: Vec<Rule>,
    default_allow: bool,
}

/// A decision and the rule that made it (`default` when none matched).
#[derive(Debug, PartialEq, Eq)]
pub struct Decision<'a> {
    pub allow: bool,
    pub rule: &'a str,
}

impl Authorization {
    pub fn compile(spec: &meshgate_crds::policy::Authorization) -> Result<Authorization, String> {
        let rules = spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Ok(Rule {
                    name: r.name.clone().unwrap_or_else(|| format!("rule-{i}")),
                    allow: r.action == AuthorizationAction::Allow,
                    cidrs: CidrSet::parse(&r.principal.client_cidrs)
                        .map_err(|e| format!("authorization rule {i}: {e}"))?,
                    consumers: r.principal.consumers.clone(),
                    claims: r.principal.claims.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Authorization {
            rules,
            default_allow: spec.default_action == Some(AuthorizationAction::Allow),
        })
    }

    pub fn decide(&self, caller: &Caller<'_>) -> Decision<'_> {
        match self.rules.iter().find(|r| r.matches(caller)) {
            Some(r) => Decision {
                allow: r.allow,
                rule: &r.name,
            },
            None => Decision {
                allow: self.default_allow,
                rule: "default",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_crds::policy::{AuthorizationRule, Principal};
    use std::sync::Arc;

    #[test]
    fn first_match_wins_and_default_denies() {
        let a = Authorization::compile(&meshgate_crds::policy::Authorization {
            rules: vec![
                AuthorizationRule {
                    name: Some("block-lab".into()),
                    action: AuthorizationAction::Deny,
                    principal: Principal {
                        client_cidrs: vec!["10.9.0.0/16".into()],
                        ..Default::default()
                    },
                },
                AuthorizationRule {
                    name: Some("admins".into()),
                    action: AuthorizationAction::Allow,
                    principal: Principal {
                        claims: vec![ClaimRequirement {
                            name: "roles".into(),
                            values: vec!["admin".into()],
                        }],
                        ..Default::default()
                    },
                },
                AuthorizationRule {
                    name: None,
                    action: AuthorizationAction::Allow,
                    principal: Principal {
                        consumers: vec!["ci".into()],
                        ..Default::default()
                    },
                },
            ],
            default_action: None,
        })
        .unwrap();
        let admin = Claims(Arc::new(
            serde_json::json!({"roles": ["user", "admin"]})
                .as_object()
                .cloned()
                .unwrap(),
        ));
        let ip = |s: &str| s.parse().unwrap();
        let d = a.decide(&Caller {
            client: ip("10.9.1.1"),
            consumer: None,
            claims: Some(&admin),
        });
        assert_eq!(
            d,
            Decision {
                allow: false,
                rule: "block-lab"
            }
        );
        let d = a.decide(&Caller {
            client: ip("10.8.1.1"),
            consumer: None,
            claims: Some(&admin),
        });
        assert_eq!(
            d,
            Decision {
                allow: true,
                rule: "admins"
            }
        );
        let d = a.decide(&Caller {
            client: ip("10.8.1.1"),
            consumer: Some("ci"),
            claims: None,
        });
        assert_eq!(
            d,
            Decision {
                allow: true,
                rule: "rule-2"
            }
        );
        let d = a.decide(&Caller {
            client: ip("10.8.1.1"),
            consumer: Some("other"),
            claims: None,
        });
        assert_eq!(
            d,
            Decision {
                allow: false,
                rule: "default"
            }
        );
    }
}

//! Resource id templates (`{user}-{team}`): parsed when the config loads, rendered from
//! a request's path parameters, never into an id that two different calls could share.

/// An id built from path parameters, e.g. `{user}-{team}`.
///
/// A rendered id must name one set of parameter values, or two different requests
/// (`/studio/user-1/team1`, `/studio/user/1-team1`) would be authorized as the same
/// resource while the upstream sees different ones. So every parameter after the first
/// must not contain any of the template's literal text (`-` here; the first parameter
/// may, as user names like `user-1` do), and the id is accepted only if it reads back
/// into exactly one set of values under that rule. Two parameters with no literal
/// between them can never be told apart and are refused when the config loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdTemplate {
    parts: Vec<IdPart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum IdPart {
    Literal(String),
    Param(String),
}

/// Why an id could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("path parameter `{0}` is missing")]
    Missing(String),
    #[error("path parameter `{0}` holds the resource id template's literal text, so the id would be ambiguous")]
    Ambiguous(String),
}

/// Why a template was refused when the config loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed `{{` in `{0}`")]
    Unclosed(String),
    #[error("`{{{name}}}` in `{text}` is not a path parameter name")]
    BadName { name: String, text: String },
    #[error(
        "`{0}` puts two parameters next to each other; put literal text between them so the id says where one ends"
    )]
    Adjacent(String),
    #[error("stray `}}` in `{0}`")]
    Stray(String),
}

impl IdTemplate {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let (literal, after) = rest.split_at(open);
            if !literal.is_empty() {
                parts.push(IdPart::Literal(literal.to_owned()));
            }
            let close = after.find('}').ok_or_else(|| TemplateError::Unclosed(text.to_owned()))?;
            let name = after.get(1..close).unwrap_or_default();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(TemplateError::BadName { name: name.to_owned(), text: text.to_owned() });
            }
            if matches!(parts.last(), Some(IdPart::Param(_))) {
                return Err(TemplateError::Adjacent(text.to_owned()));
            }
            parts.push(IdPart::Param(name.to_owned()));
            rest = after.get(close + 1..).unwrap_or_default();
        }
        if rest.contains('}') {
            return Err(TemplateError::Stray(text.to_owned()));
        }
        if !rest.is_empty() {
            parts.push(IdPart::Literal(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            IdPart::Param(name) => Some(name.as_str()),
            IdPart::Literal(_) => None,
        })
    }

    fn literals(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            IdPart::Literal(text) => Some(text.as_str()),
            IdPart::Param(_) => None,
        })
    }

    /// Fill in the parameters, refusing a missing one and values that would make the id
    /// ambiguous (see the type's documentation).
    pub fn render<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> Result<String, RenderError> {
        let mut out = String::new();
        let mut first_param = true;
        for part in &self.parts {
            match part {
                IdPart::Literal(text) => out.push_str(text),
                IdPart::Param(name) => {
                    let value = lookup(name).ok_or_else(|| RenderError::Missing(name.clone()))?;
                    // checked on the values given, not only by the reading below: values
                    // outside the rule can render an id that reads back one (other) way
                    if !first_param && self.literals().any(|literal| value.contains(literal)) {
                        return Err(RenderError::Ambiguous(name.clone()));
                    }
                    first_param = false;
                    out.push_str(value);
                }
            }
        }
        if self.readings(out.as_bytes()) != 1 {
            let name = self.params().next().unwrap_or_default().to_owned();
            return Err(RenderError::Ambiguous(name));
        }
        Ok(out)
    }

    /// In how many ways (0, 1, or 2 meaning "more than one") `id` reads back into
    /// non-empty parameter values under the rule that only the first parameter may hold
    /// literal text.
    fn readings(&self, id: &[u8]) -> u8 {
        let literals: Vec<&[u8]> = self.literals().map(str::as_bytes).filter(|l| !l.is_empty()).collect();
        // end_limit[i]: a value starting at i that must not hold literal text ends
        // before this (the end of the first literal occurrence at or after i)
        let mut end_limit = vec![usize::MAX; id.len() + 1];
        for start in (0..id.len()).rev() {
            let here = literals
                .iter()
                .filter(|l| id.get(start..).is_some_and(|rest| rest.starts_with(l)))
                .map(|l| start + l.len())
                .min()
                .unwrap_or(usize::MAX);
            let later = end_limit.get(start + 1).copied().unwrap_or(usize::MAX);
            if let Some(slot) = end_limit.get_mut(start) {
                *slot = here.min(later);
            }
        }
        let mut memo = vec![None; (self.parts.len() + 1) * (id.len() + 1)];
        self.count(0, 0, id, &end_limit, &mut memo)
    }

    fn count(&self, part: usize, pos: usize, id: &[u8], end_limit: &[usize], memo: &mut [Option<u8>]) -> u8 {
        let slot = part * (id.len() + 1) + pos;
        if let Some(Some(known)) = memo.get(slot) {
            return *known;
        }
        let found = match self.parts.get(part) {
            None => u8::from(pos == id.len()),
            Some(IdPart::Literal(text)) => match id.get(pos..) {
                Some(rest) if rest.starts_with(text.as_bytes()) => {
                    self.count(part + 1, pos + text.len(), id, end_limit, memo)
                }
                _ => 0,
            },
            Some(IdPart::Param(_)) => {
                let first = !self.parts.iter().take(part).any(|p| matches!(p, IdPart::Param(_)));
                let limit = if first {
                    id.len()
                } else {
                    end_limit.get(pos).copied().unwrap_or(0).saturating_sub(1).min(id.len())
                };
                // What follows a parameter is literal text or the end (two parameters
                // are never adjacent): only the ends where that text starts, or the id's
                // own end, can read on, so the others are not tried.
                match self.parts.get(part + 1) {
                    None => u8::from(pos < id.len() && id.len() <= limit),
                    after => {
                        let next = match after {
                            Some(IdPart::Literal(text)) => Some(text.as_bytes()),
                            _ => None,
                        };
                        let mut total = 0u8;
                        for end in pos + 1..=limit {
                            if next.is_some_and(|text| !id.get(end..).is_some_and(|rest| rest.starts_with(text))) {
                                continue;
                            }
                            total = total.saturating_add(self.count(part + 1, end, id, end_limit, memo));
                            if total >= 2 {
                                break;
                            }
                        }
                        total.min(2)
                    }
                }
            }
        };
        if let Some(memo_slot) = memo.get_mut(slot) {
            *memo_slot = Some(found);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// In how many ways `id` splits into the template's parts, every value non-empty and
    /// every value after the first free of the template's literal text: tried every way,
    /// no memo, nothing skipped (0, 1, or 2 meaning more).
    fn brute_readings(template: &IdTemplate, id: &str) -> u8 {
        fn go(parts: &[IdPart], literals: &[&str], first: bool, id: &str) -> u32 {
            match parts.split_first() {
                None => u32::from(id.is_empty()),
                Some((IdPart::Literal(text), rest)) => {
                    id.strip_prefix(text.as_str()).map_or(0, |after| go(rest, literals, first, after))
                }
                Some((IdPart::Param(_), rest)) => (1..=id.len())
                    .filter(|end| id.is_char_boundary(*end))
                    .map(|end| id.split_at(end))
                    .filter(|(value, _)| first || !literals.iter().any(|l| !l.is_empty() && value.contains(l)))
                    .map(|(_, after)| go(rest, literals, false, after))
                    .sum(),
            }
        }
        let literals: Vec<&str> = template.literals().collect();
        u8::try_from(go(&template.parts, &literals, true, id).min(2)).unwrap()
    }

    fn template() -> impl Strategy<Value = IdTemplate> {
        let literal = prop_oneof![Just("-"), Just("x"), Just("-x"), Just("x-"), Just("--"), Just("ab")];
        (proptest::bool::ANY, proptest::collection::vec(literal, 1..4), proptest::bool::ANY).prop_map(
            |(lead, literals, trail)| {
                let mut text = String::new();
                if lead {
                    text.push('p');
                }
                for (i, literal) in literals.iter().enumerate() {
                    text.push_str(&format!("{{v{i}}}{literal}"));
                }
                text.push_str(&format!("{{last}}{}", if trail { "-" } else { "" }));
                IdTemplate::parse(&text).unwrap()
            },
        )
    }

    proptest! {
        /// The reading with its shortcuts counts what trying every split counts, for
        /// ids of any text and for ids built from values the way `render` builds them.
        #[test]
        fn an_id_reads_back_as_trying_every_split_reads_it(
            template in template(),
            id in "[-xab1]{0,10}",
            values in proptest::collection::vec("[-xab1]{1,4}", 4),
        ) {
            let built: String = template
                .parts
                .iter()
                .enumerate()
                .map(|(i, part)| match part {
                    IdPart::Literal(text) => text.clone(),
                    IdPart::Param(_) => values[i % values.len()].clone(),
                })
                .collect();
            for id in [id, built] {
                prop_assert_eq!(template.readings(id.as_bytes()), brute_readings(&template, &id), "{:?} {}", template, id);
            }
        }
    }
}

//! Link arguments: `KIND:ADDRESS[?KEY=VALUE&…]` (also accepted as `KIND://ADDRESS…`, the form of
//! the bridge's `--link`). See `docs/fpga-link.md` for the keys of each kind.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A split link argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub kind: String,
    pub address: String,
    options: BTreeMap<String, String>,
    text: String,
}

impl Spec {
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Spec { spec: text.to_owned(), reason: reason.to_owned() };
        let (kind, rest) =
            text.split_once(':').ok_or_else(|| bad("expected KIND:ADDRESS, e.g. serial:/dev/ttyUSB0"))?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        Self::from_parts(kind, rest).map_err(|e| match e {
            Error::Spec { reason, .. } => Error::Spec { spec: text.to_owned(), reason },
            other => other,
        })
    }

    /// `kind` and everything after `KIND://` (as the bridge's link registry hands them over).
    pub fn from_parts(kind: &str, rest: &str) -> Result<Self> {
        let text = format!("{kind}:{rest}");
        let bad = |reason: String| Error::Spec { spec: text.clone(), reason };
        let (address, query) = match rest.split_once('?') {
            Some((a, q)) => (a, q),
            None => (rest, ""),
        };
        if address.is_empty() {
            return Err(bad("the address is empty".into()));
        }
        let mut options = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) =
                pair.split_once('=').ok_or_else(|| bad(format!("option `{pair}` is not KEY=VALUE")))?;
            if options.insert(k.to_ascii_lowercase(), v.to_owned()).is_some() {
                return Err(bad(format!("option `{k}` given twice")));
            }
        }
        Ok(Spec { kind: kind.to_ascii_lowercase(), address: address.to_owned(), options, text })
    }

    pub fn error(&self, reason: impl Into<String>) -> Error {
        Error::Spec { spec: self.text.clone(), reason: reason.into() }
    }

    /// Removes and parses option `key`.
    pub fn take<T: FromStr>(&mut self, key: &str, what: &str) -> Result<Option<T>> {
        match self.options.remove(key) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| self.error(format!("{key}={v}: expected {what}"))),
        }
    }

    /// Removes option `key` as a raw string.
    pub fn take_str(&mut self, key: &str) -> Option<String> {
        self.options.remove(key)
    }

    /// Fails if options are left that no one took.
    pub fn finish(&self) -> Result<()> {
        match self.options.keys().next() {
            None => Ok(()),
            Some(k) => Err(self.error(format!("unknown option `{k}` for {} links", self.kind))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_parse_and_options_are_checked() {
        let mut s = Spec::parse("serial:/dev/ttyUSB0?baud=3000000&parity=none").unwrap();
        assert_eq!((s.kind.as_str(), s.address.as_str()), ("serial", "/dev/ttyUSB0"));
        assert_eq!(s.take::<u32>("baud", "a number").unwrap(), Some(3_000_000));
        assert_eq!(s.take_str("parity").as_deref(), Some("none"));
        s.finish().unwrap();
        let s = Spec::parse("SERIAL:///dev/ttyS0").unwrap();
        assert_eq!(s.address, "/dev/ttyS0");
        let mut s = Spec::parse("serial:/dev/x?baud=fast&bogus=1").unwrap();
        assert!(s.take::<u32>("baud", "a number").unwrap_err().to_string().contains("baud=fast"));
        assert!(s.finish().unwrap_err().to_string().contains("unknown option `bogus`"));
        assert!(Spec::parse("/dev/ttyUSB0").is_err());
        assert!(Spec::parse("serial:?baud=1").is_err());
        assert!(Spec::parse("serial:/x?baud").is_err());
    }
}

//! The storage file, in Traefik's `acme.json` format, so a file Traefik
//! wrote keeps working here (and the reverse for certificates):
//!
//! ```json
//! { "<resolver>": {
//!     "Account": { "Email": "...", "Registration": { "body": {...}, "uri": "..." },
//!                  "PrivateKey": "<base64 DER>", "KeyType": "4096" },
//!     "Certificates": [ { "domain": { "main": "a.example", "sans": ["b.example"] },
//!                         "certificate": "<base64 PEM chain>", "key": "<base64 PEM key>",
//!                         "Store": "default" } ] } }
//! ```
//!
//! Other resolvers' entries (and keys this reader does not know) are kept
//! as they are when the file is rewritten. Writes are atomic (a temporary
//! file in the same directory, fsynced, renamed over the old one) and the
//! file is mode 0600: it holds private keys.
//!
//! The account key: Traefik stores an RSA key (PKCS#1 DER); the ACME client
//! here signs with ECDSA P-256 only, so such an account is not reused: a new
//! account is registered (an account is only a key; the certificates stay
//! valid) and stored as PKCS#8 DER in the same field.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::Domain;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Largest storage file read (it holds a few KiB per certificate).
const MAX_STORAGE_SIZE: u64 = 64 * 1024 * 1024;

/// One resolver's entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResolverData {
    #[serde(rename = "Account", default, skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountData>,
    #[serde(rename = "Certificates", default, deserialize_with = "null_as_empty")]
    pub certificates: Vec<CertData>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AccountData {
    #[serde(rename = "Email", default)]
    pub email: String,
    /// lego's registration resource: `{ "body": {...}, "uri": "<account URL>" }`.
    #[serde(rename = "Registration", default)]
    pub registration: Option<Value>,
    /// Base64 DER (Go's []byte).
    #[serde(rename = "PrivateKey", default)]
    pub private_key: String,
    #[serde(rename = "KeyType", default)]
    pub key_type: String,
}

impl AccountData {
    pub fn uri(&self) -> Option<&str> {
        self.registration.as_ref()?.get("uri")?.as_str()
    }

    pub fn key_der(&self) -> Option<Vec<u8>> {
        B64.decode(self.private_key.as_bytes()).ok()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DomainData {
    #[serde(default)]
    pub main: String,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub sans: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CertData {
    #[serde(default)]
    pub domain: DomainData,
    /// Base64 of the PEM chain.
    #[serde(default)]
    pub certificate: String,
    /// Base64 of the PEM private key.
    #[serde(default)]
    pub key: String,
    #[serde(rename = "Store", default)]
    pub store: String,
}

impl CertData {
    pub fn new(domain: &Domain, chain_pem: &str, key_pem: &str) -> CertData {
        CertData {
            domain: DomainData {
                main: domain.main.clone(),
                sans: domain.sans.clone(),
            },
            certificate: B64.encode(chain_pem.as_bytes()),
            key: B64.encode(key_pem.as_bytes()),
            store: "default".to_string(),
        }
    }

    pub fn domain(&self) -> Domain {
        Domain {
            main: self.domain.main.to_ascii_lowercase(),
            sans: self
                .domain
                .sans
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
        }
    }

    /// The PEM chain and key, decoded.
    pub fn pem(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let chain = B64.decode(self.certificate.as_bytes()).ok()?;
        let key = B64.decode(self.key.as_bytes()).ok()?;
        (!chain.is_empty() && !key.is_empty()).then_some((chain, key))
    }
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// The whole file: resolver name -> entry, as raw JSON so that entries of
/// other resolvers survive a rewrite untouched.
#[derive(Debug, Default)]
pub struct StorageFile {
    pub entries: BTreeMap<String, Value>,
}

impl StorageFile {
    /// Reads the file; a missing or empty file is an empty storage.
    pub fn load(path: &Path) -> Result<StorageFile, String> {
        let bytes = match crate::config::read_regular(path, MAX_STORAGE_SIZE) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StorageFile::default()),
            Err(e) => return Err(format!("cannot read `{}`: {e}", path.display())),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(StorageFile::default());
        }
        let entries = serde_json::from_slice(&bytes)
            .map_err(|e| format!("`{}` is not an acme.json file: {e}", path.display()))?;
        Ok(StorageFile { entries })
    }

    /// One resolver's entry (empty when absent).
    pub fn resolver(&self, name: &str) -> Result<ResolverData, String> {
        match self.entries.get(name) {
            None | Some(Value::Null) => Ok(ResolverData::default()),
            Some(v) => ResolverData::deserialize(v)
                .map_err(|e| format!("resolver `{name}` in the storage file: {e}")),
        }
    }

    pub fn set_resolver(&mut self, name: &str, data: &ResolverData) {
        if let Ok(v) = serde_json::to_value(data) {
            self.entries.insert(name.to_string(), v);
        }
    }

    /// Writes the file atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(&self.entries)
            .map_err(|e| format!("cannot encode the storage file: {e}"))?;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "acme.json".into());
        let tmp = dir
            .unwrap_or(Path::new("."))
            .join(format!(".{name}.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            if let Some(d) = dir {
                if let Ok(df) = fs::File::open(d) {
                    let _ = df.sync_all();
                }
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("cannot write the storage file `{}`: {e}", path.display())
        })
    }
}

/// The account key as PKCS#8 DER, base64 (stored in `PrivateKey`).
pub fn encode_key(der: &[u8]) -> String {
    B64.encode(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file as Traefik writes it (RSA account, Go's null for an empty
    /// list, another resolver) reads, and a rewrite keeps what it did not
    /// change.
    #[test]
    fn reads_traefik_format_and_keeps_other_entries() {
        let text = r#"{
  "le": {
    "Account": {
      "Email": "ops@example.com",
      "Registration": { "body": { "status": "valid" }, "uri": "https://ca/acct/1" },
      "PrivateKey": "AAEC",
      "KeyType": "4096"
    },
    "Certificates": [
      { "domain": { "main": "A.example.com", "sans": null },
        "certificate": "Y2VydA==", "key": "a2V5", "Store": "default" }
    ]
  },
  "other": { "Account": null, "Certificates": null }
}"#;
        let dir = std::env::temp_dir().join(format!("sg-acme-storage-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("acme.json");
        fs::write(&path, text).unwrap();
        let mut f = StorageFile::load(&path).unwrap();
        let le = f.resolver("le").unwrap();
        let acct = le.account.as_ref().unwrap();
        assert_eq!(acct.uri(), Some("https://ca/acct/1"));
        assert_eq!(acct.key_der().unwrap(), vec![0, 1, 2]);
        assert_eq!(le.certificates.len(), 1);
        let c = &le.certificates[0];
        assert_eq!(c.domain().main, "a.example.com");
        assert_eq!(c.pem().unwrap(), (b"cert".to_vec(), b"key".to_vec()));
        assert!(f.resolver("other").unwrap().certificates.is_empty());
        assert!(f.resolver("absent").unwrap().account.is_none());

        let mut le2 = le.clone();
        le2.certificates.push(CertData::new(
            &Domain {
                main: "b.example.com".into(),
                sans: vec![],
            },
            "chain",
            "k",
        ));
        f.set_resolver("le", &le2);
        f.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = StorageFile::load(&path).unwrap();
        assert!(again.entries.contains_key("other"));
        let le3 = again.resolver("le").unwrap();
        assert_eq!(le3.certificates.len(), 2);
        assert_eq!(le3.certificates[1].domain.main, "b.example.com");
        assert_eq!(le3.certificates[1].store, "default");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_or_empty_file_is_empty_storage() {
        let f = StorageFile::load(Path::new("/nonexistent/acme.json")).unwrap();
        assert!(f.entries.is_empty());
    }
}

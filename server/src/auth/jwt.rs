//! JWT tokens (etcd: `server/auth/jwt.go`, `auth/options.go`): self-contained signed tokens whose
//! claims are `username`, `revision` (the auth revision at which the token was issued) and `exp`
//! (Unix seconds). Any member holding the public key verifies one without shared state; a member
//! given only `pub-key` verifies but cannot sign (etcd's verify-only mode).
//!
//! Owns the keys; never touches the auth state: the caller compares the token's revision with the
//! current one. Crypto is `ring`'s: RSA PKCS#1 v1.5 (RS*), RSA-PSS with a salt as long as the hash
//! (PS*), and ECDSA P-256/P-384 with fixed-length `r || s` signatures (ES256/ES384).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};

use super::AuthError;

/// A token is refused unread beyond this length (the largest RSA key ring signs with gives
/// tokens of about 1 KiB).
const TOKEN_BYTES_MAX: usize = 16 * 1024;

/// DER of the `rsaEncryption` algorithm identifier's OID.
const OID_RSA: &[u8] = &[
    0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01,
];
/// DER of the `prime256v1` curve OID.
const OID_P256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
/// DER of the `secp384r1` curve OID.
const OID_P384: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];

/// etcd's `sign-method` names that Cairn signs and verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignMethod {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
}

impl SignMethod {
    pub const ALL: [SignMethod; 8] = [
        SignMethod::Rs256,
        SignMethod::Rs384,
        SignMethod::Rs512,
        SignMethod::Ps256,
        SignMethod::Ps384,
        SignMethod::Ps512,
        SignMethod::Es256,
        SignMethod::Es384,
    ];

    /// The method named `name` (etcd's `jwt.GetSigningMethod`).
    pub fn parse(name: &str) -> Result<SignMethod, JwtError> {
        if let Some(m) = SignMethod::ALL.into_iter().find(|m| m.name() == name) {
            return Ok(m);
        }
        match name {
            "ES512" | "HS256" | "HS384" | "HS512" => Err(JwtError::Unsupported(name.into())),
            _ => Err(JwtError::InvalidSignMethod(name.into())),
        }
    }

    /// The JOSE `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            SignMethod::Rs256 => "RS256",
            SignMethod::Rs384 => "RS384",
            SignMethod::Rs512 => "RS512",
            SignMethod::Ps256 => "PS256",
            SignMethod::Ps384 => "PS384",
            SignMethod::Ps512 => "PS512",
            SignMethod::Es256 => "ES256",
            SignMethod::Es384 => "ES384",
        }
    }

    fn rsa_signing(self) -> Option<&'static dyn signature::RsaEncoding> {
        Some(match self {
            SignMethod::Rs256 => &signature::RSA_PKCS1_SHA256,
            SignMethod::Rs384 => &signature::RSA_PKCS1_SHA384,
            SignMethod::Rs512 => &signature::RSA_PKCS1_SHA512,
            SignMethod::Ps256 => &signature::RSA_PSS_SHA256,
            SignMethod::Ps384 => &signature::RSA_PSS_SHA384,
            SignMethod::Ps512 => &signature::RSA_PSS_SHA512,
            SignMethod::Es256 | SignMethod::Es384 => return None,
        })
    }

    /// The ECDSA algorithm and its curve's OID (`None` for RSA methods).
    fn ecdsa_signing(self) -> Option<(&'static signature::EcdsaSigningAlgorithm, &'static [u8])> {
        match self {
            SignMethod::Es256 => Some((&signature::ECDSA_P256_SHA256_FIXED_SIGNING, OID_P256)),
            SignMethod::Es384 => Some((&signature::ECDSA_P384_SHA384_FIXED_SIGNING, OID_P384)),
            _ => None,
        }
    }

    fn verification(self) -> &'static dyn signature::VerificationAlgorithm {
        match self {
            SignMethod::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            SignMethod::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            SignMethod::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            SignMethod::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            SignMethod::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            SignMethod::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
            SignMethod::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
            SignMethod::Es384 => &signature::ECDSA_P384_SHA384_FIXED,
        }
    }
}

/// Why a JWT configuration cannot be used (reported at startup).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("auth: invalid auth signature method {0:?}")]
    InvalidSignMethod(String),
    #[error("sign-method {0} is not supported by cairn (RS*, PS*, ES256 and ES384 are)")]
    Unsupported(String),
    #[error("auth: missing key data")]
    MissingKey,
    #[error("{path}: {why}")]
    BadKey { path: String, why: String },
}

/// The options of `--auth-token jwt,...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtOptions {
    pub sign_method: SignMethod,
    pub public_key: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    /// How long a token is valid after it is issued (etcd's default: 5 minutes).
    pub ttl: Duration,
}

enum Signer {
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair),
}

/// Signs and verifies tokens with one key.
pub struct Jwt {
    method: SignMethod,
    /// `None`: verify-only (only a public key was given).
    signer: Option<Signer>,
    /// In `ring`'s form: an RSAPublicKey (DER) or an uncompressed EC point.
    public_key: Vec<u8>,
    ttl: Duration,
    rng: SystemRandom,
}

/// The claims of a token issued by [`Jwt::assign`], in the order etcd writes them (Go sorts map
/// keys).
#[derive(serde::Serialize)]
struct Claims<'a> {
    exp: u64,
    revision: u64,
    username: &'a str,
}

impl Jwt {
    /// Reads the key files named by `options`. As in etcd, a private key, when given, is the
    /// key (its public half verifies, and `pub-key` is not read); without one the member is
    /// verify-only.
    pub fn load(options: &JwtOptions) -> Result<Jwt, JwtError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| JwtError::BadKey {
                path: path.display().to_string(),
                why: e.to_string(),
            })
        };
        let (public, private) = match (&options.private_key, &options.public_key) {
            (Some(p), _) => (None, Some((p, read(p)?))),
            (None, Some(p)) => (Some((p, read(p)?)), None),
            (None, None) => return Err(JwtError::MissingKey),
        };
        let name = |p: &PathBuf| p.display().to_string();
        Jwt::from_pem(
            options.sign_method,
            public.as_ref().map(|(p, pem)| (name(p), pem.as_slice())),
            private.as_ref().map(|(p, pem)| (name(p), pem.as_slice())),
            options.ttl,
        )
    }

    /// As [`Jwt::load`], from PEM text named `(source, pem)`.
    pub fn from_pem(
        method: SignMethod,
        public: Option<(String, &[u8])>,
        private: Option<(String, &[u8])>,
        ttl: Duration,
    ) -> Result<Jwt, JwtError> {
        let rng = SystemRandom::new();
        let (signer, public_key) = match (private, public) {
            (Some((source, pem)), _) => {
                let bad = |why: String| JwtError::BadKey {
                    path: source.clone(),
                    why,
                };
                let signer = private_key(method, pem, &rng).map_err(bad)?;
                let public_key = match &signer {
                    Signer::Rsa(k) => k.public().as_ref().to_vec(),
                    Signer::Ecdsa(k) => k.public_key().as_ref().to_vec(),
                };
                (Some(signer), public_key)
            }
            (None, Some((source, pem))) => {
                let key = public_key(method, pem).map_err(|why| JwtError::BadKey {
                    path: source.clone(),
                    why,
                })?;
                (None, key)
            }
            (None, None) => return Err(JwtError::MissingKey),
        };
        Ok(Jwt {
            method,
            signer,
            public_key,
            ttl,
            rng,
        })
    }

    pub fn is_verify_only(&self) -> bool {
        self.signer.is_none()
    }

    /// A token for `user` at auth `revision`, valid for the TTL from `now` (etcd:
    /// `tokenJWT.assign`). A verify-only member answers etcd's `ErrVerifyOnly`.
    pub fn assign(&self, user: &str, revision: u64, now: SystemTime) -> Result<String, AuthError> {
        let signer = self.signer.as_ref().ok_or(AuthError::VerifyOnly)?;
        let exp = unix_seconds(now) + self.ttl.as_secs();
        let header = format!(r#"{{"alg":"{}","typ":"JWT"}}"#, self.method.name());
        let claims = Claims {
            exp,
            revision,
            username: user,
        };
        let claims = serde_json::to_vec(&claims).expect("claims serialize");
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims));
        let signature = match signer {
            Signer::Rsa(key) => {
                let encoding = self
                    .method
                    .rsa_signing()
                    .expect("an RSA key has an RSA method");
                let mut signature = vec![0; key.public().modulus_len()];
                key.sign(encoding, &self.rng, token.as_bytes(), &mut signature)
                    .expect("RSA signing with a loaded key succeeds");
                signature
            }
            Signer::Ecdsa(key) => key
                .sign(&self.rng, token.as_bytes())
                .expect("ECDSA signing with a loaded key succeeds")
                .as_ref()
                .to_vec(),
        };
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(token)
    }

    /// The user and auth revision of `token` if its signature is ours, its `alg` is our method
    /// and it has not expired at `now` (etcd: `tokenJWT.info` over jwt-go's `Parse`, which also
    /// honours `nbf` and `iat` when present).
    pub fn info(&self, token: &str, now: SystemTime) -> Option<(String, u64)> {
        if token.len() > TOKEN_BYTES_MAX {
            return None;
        }
        let (signed, signature) = token.rsplit_once('.')?;
        let (header, claims) = signed.split_once('.')?;
        let header: serde_json::Value = serde_json::from_slice(&decode(header)?).ok()?;
        if header.get("alg")?.as_str()? != self.method.name() {
            return None;
        }
        UnparsedPublicKey::new(self.method.verification(), &self.public_key)
            .verify(signed.as_bytes(), &decode(signature)?)
            .ok()?;
        let claims: serde_json::Value = serde_json::from_slice(&decode(claims)?).ok()?;
        let now = unix_seconds(now) as f64;
        let claim = |name: &str| claims.get(name).map(serde_json::Value::as_f64);
        let valid = match (claim("exp"), claim("nbf"), claim("iat")) {
            (Some(None), _, _) | (_, Some(None), _) | (_, _, Some(None)) => false,
            (exp, nbf, iat) => {
                exp.flatten().is_none_or(|exp| now <= exp)
                    && nbf.flatten().is_none_or(|nbf| now >= nbf)
                    && iat.flatten().is_none_or(|iat| now >= iat)
            }
        };
        if !valid {
            return None;
        }
        let user = claims.get("username")?.as_str()?.to_string();
        let revision = claims.get("revision")?.as_f64()?;
        (revision >= 0.0).then_some((user, revision as u64))
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

fn decode(segment: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(segment).ok()
}

fn private_key(method: SignMethod, pem: &[u8], rng: &SystemRandom) -> Result<Signer, String> {
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no private key: {e}"))?;
    let rejected = |e: ring::error::KeyRejected| format!("not a key for {}: {e}", method.name());
    if method.rsa_signing().is_some() {
        let key = match &der {
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            _ => return Err(format!("not an RSA key, {} needs one", method.name())),
        };
        return key.map(Signer::Rsa).map_err(rejected);
    }
    let (algorithm, _) = method.ecdsa_signing().expect("not RSA: ECDSA");
    let key = match &der {
        PrivateKeyDer::Pkcs8(k) => EcdsaKeyPair::from_pkcs8(algorithm, k.secret_pkcs8_der(), rng),
        PrivateKeyDer::Sec1(k) => {
            let (private, public) = sec1_parts(k.secret_sec1_der())
                .ok_or("an EC private key without its public key")?;
            EcdsaKeyPair::from_private_key_and_public_key(algorithm, private, public, rng)
        }
        _ => return Err(format!("not an EC key, {} needs one", method.name())),
    };
    key.map(Signer::Ecdsa).map_err(rejected)
}

/// The key `method` verifies with, from a `PUBLIC KEY` (SubjectPublicKeyInfo) PEM.
fn public_key(method: SignMethod, pem: &[u8]) -> Result<Vec<u8>, String> {
    let spki =
        SubjectPublicKeyInfoDer::from_pem_slice(pem).map_err(|e| format!("no public key: {e}"))?;
    let (algorithm, key) = spki_parts(spki.as_ref()).ok_or("malformed public key")?;
    let expected: &[&[u8]] = match method.ecdsa_signing() {
        Some((_, curve)) => &[curve],
        None => &[OID_RSA],
    };
    if !expected.iter().all(|oid| contains(algorithm, oid)) {
        return Err(format!("not a public key for {}", method.name()));
    }
    Ok(key.to_vec())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// One DER element: `(tag, content, rest)`.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7F);
        if count == 0 || count > 4 || input.len() < count {
            return None;
        }
        let (bytes, rest) = input.split_at(count);
        input = rest;
        bytes.iter().fold(0, |n, &b| (n << 8) | usize::from(b))
    };
    (input.len() >= len).then(|| (tag, &input[..len], &input[len..]))
}

/// The contents of a BIT STRING without unused bits.
fn bit_string(content: &[u8]) -> Option<&[u8]> {
    content
        .split_first()
        .filter(|(&unused, _)| unused == 0)
        .map(|(_, b)| b)
}

/// SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }:
/// the algorithm's content and the key.
fn spki_parts(spki: &[u8]) -> Option<(&[u8], &[u8])> {
    let (0x30, body, _) = der(spki)? else {
        return None;
    };
    let (0x30, algorithm, rest) = der(body)? else {
        return None;
    };
    let (0x03, key, _) = der(rest)? else {
        return None;
    };
    Some((algorithm, bit_string(key)?))
}

/// ECPrivateKey ::= SEQUENCE { version, privateKey OCTET STRING, [0] parameters OPTIONAL,
/// [1] publicKey BIT STRING OPTIONAL } (RFC 5915): the private scalar and the public point.
fn sec1_parts(sec1: &[u8]) -> Option<(&[u8], &[u8])> {
    let (0x30, mut fields, _) = der(sec1)? else {
        return None;
    };
    let (mut private, mut public) = (None, None);
    while !fields.is_empty() {
        let (tag, content, rest) = der(fields)?;
        match tag {
            0x04 => private = Some(content),
            0xA1 => {
                let (0x03, key, _) = der(content)? else {
                    return None;
                };
                public = Some(bit_string(key)?);
            }
            _ => {}
        }
        fields = rest;
    }
    Some((private?, public?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key files made by `openssl`, as an operator would make them.
    struct Keys {
        dir: tempfile::TempDir,
    }

    impl Keys {
        fn new() -> Keys {
            Keys {
                dir: tempfile::tempdir().expect("temp dir"),
            }
        }

        /// Runs `openssl <command> -out <out> <options>...` in the key directory and returns the PEM it wrote to `out`.
        fn openssl(&self, out: &str, args: &[&str]) -> Vec<u8> {
            let status = std::process::Command::new("openssl")
                .arg(args[0])
                .args(["-out", out])
                .args(&args[1..])
                .current_dir(self.dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl runs");
            assert!(status.success(), "openssl {args:?}");
            std::fs::read(self.dir.path().join(out)).expect("key file")
        }

        fn public_of(&self, private: &str, out: &str) -> Vec<u8> {
            self.openssl(out, &["pkey", "-in", private, "-pubout"])
        }
    }

    const TTL: Duration = Duration::from_secs(60);

    fn jwt(method: SignMethod, public: Option<&[u8]>, private: Option<&[u8]>) -> Jwt {
        let named = |pem| ("test key".to_string(), pem);
        Jwt::from_pem(method, public.map(named), private.map(named), TTL).expect("usable key")
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    /// A signer and a verify-only member for every method, over RSA (PKCS#8 and PKCS#1) and EC
    /// (SEC1 and PKCS#8) keys.
    fn members() -> Vec<(Jwt, Jwt)> {
        let keys = Keys::new();
        let rsa = keys.openssl("rsa.pem", &["genrsa", "2048"]);
        let rsa_pub = keys.public_of("rsa.pem", "rsa.pub");
        let rsa1 = keys.openssl("rsa1.pem", &["rsa", "-in", "rsa.pem", "-traditional"]);
        let p256 = keys.openssl(
            "p256.pem",
            &["ecparam", "-genkey", "-name", "prime256v1", "-noout"],
        );
        let p256_pub = keys.public_of("p256.pem", "p256.pub");
        let p384 = keys.openssl(
            "p384.pem",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
            ],
        );
        let p384_pub = keys.public_of("p384.pem", "p384.pub");
        assert!(rsa1.starts_with(b"-----BEGIN RSA PRIVATE KEY"));
        assert!(p256.starts_with(b"-----BEGIN EC PRIVATE KEY"));
        assert!(p384.starts_with(b"-----BEGIN PRIVATE KEY"));
        SignMethod::ALL
            .into_iter()
            .map(|m| {
                let (private, public) = match m {
                    SignMethod::Es256 => (&p256, &p256_pub),
                    SignMethod::Es384 => (&p384, &p384_pub),
                    SignMethod::Rs384 | SignMethod::Ps384 => (&rsa1, &rsa_pub),
                    _ => (&rsa, &rsa_pub),
                };
                (jwt(m, None, Some(private)), jwt(m, Some(public), None))
            })
            .collect()
    }

    #[test]
    fn every_method_round_trips_and_a_verify_only_member_cannot_sign() {
        for (signer, verifier) in members() {
            let method = signer.method.name();
            let token = signer.assign("alice", 7, at(1_000)).expect("signs");
            let expected = Some(("alice".to_string(), 7));
            assert_eq!(signer.info(&token, at(1_000)), expected, "{method}");
            assert_eq!(verifier.info(&token, at(1_000)), expected, "{method}");
            assert!(!signer.is_verify_only());
            assert!(verifier.is_verify_only());
            assert_eq!(
                verifier.assign("alice", 7, at(1_000)),
                Err(AuthError::VerifyOnly)
            );
        }
    }

    #[test]
    fn tokens_carry_etcds_header_and_claims() {
        let (signer, _) = members().remove(0);
        let token = signer.assign("al\"ice", 4, at(1_000)).expect("signs");
        let parts: Vec<_> = token
            .split('.')
            .map(|p| decode(p).expect("base64url"))
            .collect();
        assert_eq!(parts[0], br#"{"alg":"RS256","typ":"JWT"}"#);
        assert_eq!(
            parts[1],
            br#"{"exp":1060,"revision":4,"username":"al\"ice"}"#
        );
        assert_eq!(parts[2].len(), 256);
    }

    #[test]
    fn expired_tokens_are_refused() {
        for (signer, verifier) in members() {
            let token = signer.assign("alice", 1, at(1_000)).expect("signs");
            assert!(verifier.info(&token, at(1_060)).is_some());
            assert_eq!(verifier.info(&token, at(1_061)), None);
        }
    }

    #[test]
    fn tokens_of_another_key_or_method_or_tampered_are_refused() {
        let members = members();
        let others = members_other_keys();
        for ((signer, verifier), other) in members.iter().zip(&others) {
            let method = signer.method.name();
            let foreign = other.assign("alice", 1, at(1_000)).expect("signs");
            assert_eq!(verifier.info(&foreign, at(1_000)), None, "{method}");

            let token = signer.assign("alice", 1, at(1_000)).expect("signs");
            let (signed, signature) = token.rsplit_once('.').expect("three parts");
            let (header, _) = signed.split_once('.').expect("three parts");
            let forged = URL_SAFE_NO_PAD.encode(br#"{"exp":9999,"revision":1,"username":"root"}"#);
            let tampered = format!("{header}.{forged}.{signature}");
            assert_eq!(verifier.info(&tampered, at(1_000)), None, "{method}");
            assert_eq!(verifier.info("garbage", at(1_000)), None);
            assert_eq!(verifier.info(&format!("{token}."), at(1_000)), None);
        }
        // A valid ES256 token shown to an RS256 member: wrong `alg`.
        let es256 = members[6].0.assign("alice", 1, at(1_000)).expect("signs");
        assert_eq!(members[0].1.info(&es256, at(1_000)), None);
    }

    /// Signers with fresh keys, one per method, in [`SignMethod::ALL`]'s order.
    fn members_other_keys() -> Vec<Jwt> {
        members().into_iter().map(|(signer, _)| signer).collect()
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert_eq!(
            SignMethod::parse("XX256"),
            Err(JwtError::InvalidSignMethod("XX256".into()))
        );
        assert!(matches!(
            SignMethod::parse("ES512"),
            Err(JwtError::Unsupported(_))
        ));
        let missing = Jwt::from_pem(SignMethod::Rs256, None, None, TTL).err();
        assert_eq!(missing, Some(JwtError::MissingKey));
        let keys = Keys::new();
        let ec = keys.openssl(
            "ec.pem",
            &["ecparam", "-genkey", "-name", "prime256v1", "-noout"],
        );
        let ec_pub = keys.public_of("ec.pem", "ec.pub");
        let named = |pem| Some(("k".to_string(), pem));
        let wrong_private = Jwt::from_pem(SignMethod::Rs256, None, named(&ec[..]), TTL);
        assert!(matches!(wrong_private, Err(JwtError::BadKey { .. })));
        let wrong_public = Jwt::from_pem(SignMethod::Rs256, named(&ec_pub[..]), None, TTL);
        assert!(matches!(wrong_public, Err(JwtError::BadKey { .. })));
        let wrong_curve = Jwt::from_pem(SignMethod::Es384, named(&ec_pub[..]), None, TTL);
        assert!(matches!(wrong_curve, Err(JwtError::BadKey { .. })));
    }
}

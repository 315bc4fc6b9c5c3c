//! WireGuard keys in the text form that `wg` reads and prints.
//!
//! A key is 32 bytes, written as 44 characters of standard base64 ending in one `=`, exactly as
//! `wg genkey`, `wg pubkey` and `wg genpsk` print it. Three types keep the three kinds of key
//! apart:
//!
//! - [`PrivateKey`]: an interface's Curve25519 secret. [`PrivateKey::public_key`] derives the
//!   [`PublicKey`] the other side knows it by, with the same result as `wg pubkey`.
//! - [`PublicKey`]: what a peer is known by. It is not secret: it can be printed and logged.
//! - [`PresharedKey`]: an optional symmetric secret two peers share for post-quantum resistance.
//!
//! Parsing is the only way in from text: `"...".parse::<PrivateKey>()` or `from_file`. A value
//! of these types always holds exactly 32 bytes, so later code needs no checks.
//!
//! # Secrets
//! `PrivateKey` and `PresharedKey` have no `Display`, their `Debug` prints `<redacted>`, their
//! bytes are zeroized when they are dropped, and no [`KeyError`] holds key text or file content.
//! Turning a secret back into text takes an explicit call to `to_base64`; the `String` it returns
//! is the caller's to wipe (wrap it in [`zeroize::Zeroizing`]). Copies that leave this module as
//! plain bytes (`as_bytes`, [`PrivateKey::to_static_secret`]) are likewise out of our hands;
//! boringtun's `StaticSecret` zeroizes itself on drop.
//!
//! # Errors
//! A [`KeyError`] message describes its own layer only; the underlying cause (an I/O error, or
//! why a file's content is not a key) is reached through [`std::error::Error::source`] and is
//! never repeated in the message, so printing the whole chain reads without duplicates.
//!
//! # Not done here
//! Key files are not checked for loose permissions (`wg` warns about a world-readable private
//! key file; we read it silently). Public keys are not checked for low-order points: like `wg`,
//! we accept any 32 bytes, and the handshake with such a peer simply fails.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use boringtun::x25519;
use rand_core::{CryptoRngCore, OsRng};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// An interface's X25519 private key.
///
/// Build one with [`PrivateKey::generate`], by parsing `wg`'s base64 text, or with
/// [`PrivateKey::from_file`]. Hand it to boringtun with [`PrivateKey::to_static_secret`].
/// Its bytes are zeroized on drop and its `Debug` output is redacted.
#[derive(Clone)]
pub struct PrivateKey([u8; KEY_LEN]);

impl PrivateKey {
    /// Generates a random private key, clamped exactly like `wg genkey`.
    ///
    /// # Panics
    /// Panics if the operating system cannot provide random bytes (`getrandom` fails), as `wg`
    /// and x25519-dalek do too: without them there is no safe key to return.
    pub fn generate() -> Self {
        Self::generate_from_rng(&mut OsRng)
    }

    /// Generates a private key from `rng`, clamped exactly like `wg genkey`.
    ///
    /// For simulations and tests that need reproducible keys; real keys come from
    /// [`PrivateKey::generate`].
    pub fn generate_from_rng<R: CryptoRngCore + ?Sized>(rng: &mut R) -> Self {
        let mut key = Self([0; KEY_LEN]);
        rng.fill_bytes(&mut key.0);
        clamp(&mut key.0);
        key
    }

    /// Wraps raw key bytes as they are, without clamping.
    ///
    /// X25519 clamps the scalar whenever it is used, so the public key is the same either way;
    /// only [`PrivateKey::to_base64`] shows the difference.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Derives the public key, with the same result as `wg pubkey`.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::PublicKey::from(&self.to_static_secret()).to_bytes())
    }

    /// Writes the secret as `wg`'s base64 text. The result is secret too.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Copies the secret into the type boringtun takes (which zeroizes itself on drop).
    pub fn to_static_secret(&self) -> x25519::StaticSecret {
        x25519::StaticSecret::from(self.0)
    }

    /// Reads a key file such as one written by `wg genkey > key`.
    ///
    /// Whitespace around the key (the trailing newline) is ignored. Errors name `path` but never
    /// contain the file's content.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let mut key = Self([0; KEY_LEN]);
        read_key_file(path, &mut key.0)?;
        Ok(key)
    }
}

impl FromStr for PrivateKey {
    type Err = KeyError;

    /// Parses `wg`'s base64 text; whitespace around it is ignored.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut key = Self([0; KEY_LEN]);
        decode_key(text, &mut key.0)?;
        Ok(key)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        bytes_equal(&self.0, &other.0)
    }
}

impl Eq for PrivateKey {}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for PrivateKey {}

/// A peer's X25519 public key: what the peer is known by.
///
/// Not secret: `Display` and `Debug` both show the base64 text `wg` prints. Hand it to
/// boringtun with [`PublicKey::to_x25519`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Converts to the type boringtun takes.
    pub fn to_x25519(&self) -> x25519::PublicKey {
        x25519::PublicKey::from(self.0)
    }
}

impl From<[u8; KEY_LEN]> for PublicKey {
    fn from(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }
}

impl From<x25519::PublicKey> for PublicKey {
    fn from(key: x25519::PublicKey) -> Self {
        Self(key.to_bytes())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    /// Parses `wg`'s base64 text; whitespace around it is ignored.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut key = Self([0; KEY_LEN]);
        decode_key(text, &mut key.0)?;
        Ok(key)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A symmetric secret two peers share, mixed into their handshake (`wg genpsk`).
///
/// Build one with [`PresharedKey::generate`], by parsing `wg`'s base64 text, or with
/// [`PresharedKey::from_file`]. Hand it to boringtun with [`PresharedKey::as_bytes`].
/// Its bytes are zeroized on drop and its `Debug` output is redacted.
#[derive(Clone)]
pub struct PresharedKey([u8; KEY_LEN]);

impl PresharedKey {
    /// Generates 32 random bytes, like `wg genpsk`.
    ///
    /// # Panics
    /// Panics if the operating system cannot provide random bytes (`getrandom` fails), as `wg`
    /// does too: without them there is no safe key to return.
    pub fn generate() -> Self {
        Self::generate_from_rng(&mut OsRng)
    }

    /// Generates a preshared key from `rng`, for simulations and tests.
    pub fn generate_from_rng<R: CryptoRngCore + ?Sized>(rng: &mut R) -> Self {
        let mut key = Self([0; KEY_LEN]);
        rng.fill_bytes(&mut key.0);
        key
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes, as boringtun takes them. They are secret.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Writes the secret as `wg`'s base64 text. The result is secret too.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Reads a key file such as one written by `wg genpsk > psk`.
    ///
    /// Whitespace around the key (the trailing newline) is ignored. Errors name `path` but never
    /// contain the file's content.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let mut key = Self([0; KEY_LEN]);
        read_key_file(path, &mut key.0)?;
        Ok(key)
    }
}

impl FromStr for PresharedKey {
    type Err = KeyError;

    /// Parses `wg`'s base64 text; whitespace around it is ignored.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut key = Self([0; KEY_LEN]);
        decode_key(text, &mut key.0)?;
        Ok(key)
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

impl PartialEq for PresharedKey {
    fn eq(&self, other: &Self) -> bool {
        bytes_equal(&self.0, &other.0)
    }
}

impl Eq for PresharedKey {}

impl Drop for PresharedKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for PresharedKey {}

/// Why a key could not be parsed or read. No variant holds key text or file content.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text was empty or only whitespace. Paste the key `wg genkey`/`wg pubkey` printed.
    #[error("the key is empty")]
    Empty,

    /// The text is not standard base64 with padding, as `wg` writes keys. Check for a truncated
    /// copy, stray characters, or a key in another encoding (hex, URL-safe base64).
    #[error("the key is not valid base64: expected 44 characters of standard base64 ending in '='")]
    NotBase64,

    /// The text is valid base64 but does not decode to 32 bytes, so it is not a WireGuard key.
    /// `len` is how many bytes it decodes to.
    #[error(
        "the key decodes to {len} bytes, but a WireGuard key is 32 bytes (44 base64 characters)"
    )]
    WrongLength {
        /// How many bytes the text decodes to.
        len: usize,
    },

    /// The key file could not be read (missing, not permitted, a directory, ...). The cause is
    /// in `source`.
    #[error("could not read key file {}", path.display())]
    Io {
        /// The file that was to be read.
        path: PathBuf,
        /// What the operating system reported.
        source: io::Error,
    },

    /// The key file is far larger than any key, so it was not read to the end. Check that the
    /// path names a key file (and not, say, a device or a log).
    #[error("key file {} is larger than {limit} bytes, so it cannot hold a key", path.display())]
    FileTooLarge {
        /// The file that was read.
        path: PathBuf,
        /// The most bytes a key file may hold, whitespace included.
        limit: usize,
    },

    /// The key file was read but its content is not a key; `source` says why (it is never
    /// [`KeyError::Io`]). Regenerate the file with `wg genkey` or `wg genpsk`.
    #[error("key file {} does not hold a valid WireGuard key", path.display())]
    BadFile {
        /// The file that was read.
        path: PathBuf,
        /// Why its content is not a key.
        source: Box<KeyError>,
    },
}

/// Decodes `wg`'s base64 text (surrounding whitespace ignored) into `out`.
fn decode_key(text: &str, out: &mut [u8; KEY_LEN]) -> Result<(), KeyError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(KeyError::Empty);
    }

    // The decoder's own error names the offending byte, which is key material: drop it.
    let bytes = Zeroizing::new(STANDARD.decode(text).map_err(|_| KeyError::NotBase64)?);
    if bytes.len() != KEY_LEN {
        return Err(KeyError::WrongLength { len: bytes.len() });
    }
    out.copy_from_slice(&bytes);
    Ok(())
}

/// Reads the key file at `path` into `out`, wiping the text it read.
fn read_key_file(path: &Path, out: &mut [u8; KEY_LEN]) -> Result<(), KeyError> {
    // Read at most one byte past the limit, so a wrong path (a device, a log) cannot exhaust
    // memory.
    let io_error = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_error)?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(KEY_FILE_MAX_BYTES + 1));
    file.take(KEY_FILE_MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() > KEY_FILE_MAX_BYTES {
        return Err(KeyError::FileTooLarge {
            path: path.to_owned(),
            limit: KEY_FILE_MAX_BYTES,
        });
    }

    // Decode, naming the file in any error.
    std::str::from_utf8(&bytes)
        .map_err(|_| KeyError::NotBase64)
        .and_then(|text| decode_key(text, out))
        .map_err(|reason| KeyError::BadFile {
            path: path.to_owned(),
            source: Box::new(reason),
        })
}

/// Clamps an X25519 scalar the way `wg genkey` does (RFC 7748, section 5).
fn clamp(key: &mut [u8; KEY_LEN]) {
    key[0] &= 248;
    key[31] &= 127;
    key[31] |= 64;
}

/// Compares two keys without stopping at the first difference.
fn bytes_equal(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> bool {
    a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Length of every WireGuard key in bytes: private, public and preshared alike.
pub const KEY_LEN: usize = 32;

/// The most a key file may hold, whitespace included: a 44-character key needs far less.
const KEY_FILE_MAX_BYTES: usize = 4096;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::error::Error as _;

    use proptest::prelude::*;
    use rand_core::{CryptoRng, RngCore};

    use super::*;

    /// The example pair from the WireGuard documentation, checked against `wg`-compatible
    /// X25519 (OpenSSL) while writing this test.
    const WG_DOCS_PRIVATE: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const WG_DOCS_PUBLIC: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    /// RFC 7748, section 6.1: Alice's and Bob's keys and their shared secret, in base64.
    const RFC_ALICE_PRIVATE: &str = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
    const RFC_ALICE_PUBLIC_HEX: &str =
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
    const RFC_BOB_PRIVATE: &str = "XasIfmJKikt54X+Lg4AO5m87sSkmGLb9HC+LJ/+I4Os=";
    const RFC_BOB_PUBLIC_HEX: &str =
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";
    const RFC_SHARED_HEX: &str = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Writes `content` to a fresh file under the system temp directory.
    fn temp_file(name: &str, content: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-keys-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Joins an error and all its sources, the way a CLI prints one line.
    fn chain(error: &dyn std::error::Error) -> String {
        let mut text = error.to_string();
        let mut next = error.source();
        while let Some(cause) = next {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            next = cause.source();
        }
        text
    }

    /// An RNG that returns one byte over and over, to pin down clamping.
    struct ConstantRng(u8);

    impl RngCore for ConstantRng {
        fn next_u32(&mut self) -> u32 {
            u32::from_ne_bytes([self.0; 4])
        }
        fn next_u64(&mut self) -> u64 {
            u64::from_ne_bytes([self.0; 8])
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            dest.fill(self.0);
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            dest.fill(self.0);
            Ok(())
        }
    }

    impl CryptoRng for ConstantRng {}

    #[test]
    fn wg_docs_pair_matches() {
        let private: PrivateKey = WG_DOCS_PRIVATE.parse().unwrap();
        assert_eq!(private.public_key().to_string(), WG_DOCS_PUBLIC);
    }

    #[test]
    fn rfc7748_vectors_match() {
        let alice: PrivateKey = RFC_ALICE_PRIVATE.parse().unwrap();
        let bob: PrivateKey = RFC_BOB_PRIVATE.parse().unwrap();
        assert_eq!(hex(alice.public_key().as_bytes()), RFC_ALICE_PUBLIC_HEX);
        assert_eq!(hex(bob.public_key().as_bytes()), RFC_BOB_PUBLIC_HEX);

        let shared = alice
            .to_static_secret()
            .diffie_hellman(&bob.public_key().to_x25519());
        assert_eq!(hex(shared.as_bytes()), RFC_SHARED_HEX);
    }

    #[test]
    fn public_key_agrees_with_x25519_dalek() {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();

        // Direct derivation through x25519-dalek, bypassing our wrapper.
        let direct = x25519::PublicKey::from(&x25519::StaticSecret::from(a.0));
        assert_eq!(a.public_key().as_bytes(), direct.as_bytes());

        // Both sides of a Diffie-Hellman exchange agree only if both public keys are right.
        let ab = a
            .to_static_secret()
            .diffie_hellman(&b.public_key().to_x25519());
        let ba = b
            .to_static_secret()
            .diffie_hellman(&a.public_key().to_x25519());
        assert_eq!(ab.as_bytes(), ba.as_bytes());
    }

    #[test]
    fn generate_is_clamped() {
        for _ in 0..64 {
            let key = PrivateKey::generate();
            assert_eq!(key.0[0] & 7, 0);
            assert_eq!(key.0[31] & 0xc0, 0x40);
        }
        let ones = PrivateKey::generate_from_rng(&mut ConstantRng(0xff));
        assert_eq!((ones.0[0], ones.0[31]), (0xf8, 0x7f));
        let zeros = PrivateKey::generate_from_rng(&mut ConstantRng(0));
        assert_eq!((zeros.0[0], zeros.0[31]), (0x00, 0x40));
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(PrivateKey::generate(), PrivateKey::generate());
        assert_ne!(PresharedKey::generate(), PresharedKey::generate());
    }

    #[test]
    fn preshared_key_is_not_clamped() {
        let psk = PresharedKey::generate_from_rng(&mut ConstantRng(0xff));
        assert_eq!(psk.as_bytes(), &[0xff; KEY_LEN]);
    }

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        let padded = format!(" \t{WG_DOCS_PRIVATE}\r\n\n");
        let key: PrivateKey = padded.parse().unwrap();
        assert_eq!(key.to_base64(), WG_DOCS_PRIVATE);
        let public: PublicKey = format!("{WG_DOCS_PUBLIC}\n").parse().unwrap();
        assert_eq!(public.to_string(), WG_DOCS_PUBLIC);
        let psk: PresharedKey = format!("\n{WG_DOCS_PRIVATE} ").parse().unwrap();
        assert_eq!(psk.to_base64(), WG_DOCS_PRIVATE);
    }

    #[test]
    fn wrong_length_is_rejected() {
        let short = "AAAA".parse::<PublicKey>().unwrap_err();
        assert!(matches!(short, KeyError::WrongLength { len: 3 }));
        let long = STANDARD.encode([7u8; 36]);
        let error = long.parse::<PresharedKey>().unwrap_err();
        assert!(matches!(error, KeyError::WrongLength { len: 36 }));
        let long = STANDARD.encode([7u8; 33]);
        let error = long.parse::<PrivateKey>().unwrap_err();
        assert!(matches!(error, KeyError::WrongLength { len: 33 }));
    }

    #[test]
    fn garbage_is_rejected() {
        for text in [
            "not a key at all!",
            &WG_DOCS_PRIVATE[..43],                   // padding dropped
            &WG_DOCS_PRIVATE.replace('+', "-"),       // URL-safe alphabet
            &format!("{}l=", &WG_DOCS_PRIVATE[..42]), // non-zero trailing bits
            &format!("{} {}", &WG_DOCS_PRIVATE[..20], &WG_DOCS_PRIVATE[20..]), // inner space
        ] {
            let error = text.parse::<PrivateKey>().unwrap_err();
            assert!(
                matches!(error, KeyError::NotBase64),
                "{text:?} gave {error:?}"
            );
        }
    }

    #[test]
    fn empty_is_rejected() {
        assert!(matches!("".parse::<PublicKey>(), Err(KeyError::Empty)));
        assert!(matches!(
            " \n\t".parse::<PrivateKey>(),
            Err(KeyError::Empty)
        ));
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let private: PrivateKey = WG_DOCS_PRIVATE.parse().unwrap();
        let psk: PresharedKey = WG_DOCS_PRIVATE.parse().unwrap();
        let shown = format!("{private:?} {psk:?} {private:#?} {psk:#?}");
        assert!(!shown.contains(WG_DOCS_PRIVATE), "{shown}");
        assert!(!shown.contains(&WG_DOCS_PRIVATE[..20]), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn public_key_is_shown_in_display_and_debug() {
        let public: PublicKey = WG_DOCS_PUBLIC.parse().unwrap();
        assert_eq!(public.to_string(), WG_DOCS_PUBLIC);
        assert_eq!(
            format!("{public:?}"),
            format!("PublicKey({WG_DOCS_PUBLIC})")
        );
    }

    #[test]
    fn errors_never_contain_key_text() {
        let almost = format!("{}#", &WG_DOCS_PRIVATE[..43]);
        let errors = [
            almost.parse::<PrivateKey>().unwrap_err(),
            WG_DOCS_PRIVATE[..40].parse::<PrivateKey>().unwrap_err(),
            format!("{WG_DOCS_PRIVATE}AAAA")
                .parse::<PresharedKey>()
                .unwrap_err(),
        ];
        for error in errors {
            let shown = format!("{} {error:?}", chain(&error));
            assert!(!shown.contains(&WG_DOCS_PRIVATE[..20]), "{shown}");
        }
    }

    #[test]
    fn from_file_trims_the_newline() {
        let path = temp_file("private", format!("{WG_DOCS_PRIVATE}\n").as_bytes());
        let key = PrivateKey::from_file(&path).unwrap();
        assert_eq!(key.public_key().to_string(), WG_DOCS_PUBLIC);
        let psk = PresharedKey::from_file(&path).unwrap();
        assert_eq!(psk.to_base64(), WG_DOCS_PRIVATE);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn missing_file_error_names_the_path() {
        let path = std::env::temp_dir().join("ferry-keys-test-no-such-file");
        let error = PrivateKey::from_file(&path).unwrap_err();
        assert!(matches!(&error, KeyError::Io { path: p, .. } if p == &path));
        assert!(error.to_string().contains(&path.display().to_string()));
        assert!(error.source().is_some());
    }

    #[test]
    fn bad_file_error_names_the_path_but_not_the_content() {
        let secret_ish = &WG_DOCS_PRIVATE[..40];
        let path = temp_file("truncated", secret_ish.as_bytes());
        let error = PrivateKey::from_file(&path).unwrap_err();
        let shown = format!("{} {error:?}", chain(&error));
        assert!(shown.contains(&path.display().to_string()), "{shown}");
        assert!(!shown.contains(secret_ish), "{shown}");
        assert!(matches!(
            &error,
            KeyError::BadFile { source, .. } if matches!(**source, KeyError::WrongLength { len: 30 })
        ));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn non_utf8_file_is_not_a_key() {
        let path = temp_file("binary", &[0xff, 0xfe, 0x00, 0x80]);
        let error = PresharedKey::from_file(&path).unwrap_err();
        assert!(matches!(error, KeyError::BadFile { .. }));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn huge_file_is_refused_without_reading_it_all() {
        let path = temp_file("huge", &vec![b' '; KEY_FILE_MAX_BYTES + 1]);
        let error = PrivateKey::from_file(&path).unwrap_err();
        assert!(
            matches!(error, KeyError::FileTooLarge { limit, .. } if limit == KEY_FILE_MAX_BYTES)
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn boringtun_conversions_agree() {
        let private: PrivateKey = WG_DOCS_PRIVATE.parse().unwrap();
        let from_secret = PublicKey::from(x25519::PublicKey::from(&private.to_static_secret()));
        assert_eq!(from_secret, private.public_key());
        assert_eq!(
            private.public_key().to_x25519().as_bytes(),
            private.public_key().as_bytes()
        );
    }

    proptest! {
        #[test]
        fn base64_round_trips(bytes in any::<[u8; KEY_LEN]>()) {
            let private = PrivateKey::from_bytes(bytes);
            let text = private.to_base64();
            prop_assert_eq!(text.len(), 44);
            prop_assert!(text.ends_with('='));
            prop_assert!(text.parse::<PrivateKey>().unwrap() == private);

            let public = PublicKey::from_bytes(bytes);
            prop_assert_eq!(public.to_string().parse::<PublicKey>().unwrap(), public);

            let psk = PresharedKey::from_bytes(bytes);
            prop_assert!(psk.to_base64().parse::<PresharedKey>().unwrap() == psk);
        }

        #[test]
        fn debug_never_shows_a_secret(bytes in any::<[u8; KEY_LEN]>()) {
            let text = STANDARD.encode(bytes);
            let shown = format!("{:?} {:?}", PrivateKey::from_bytes(bytes), PresharedKey::from_bytes(bytes));
            prop_assert!(!shown.contains(&text));
        }
    }
}

//! CMS (RFC 5652) through OpenSSL: detached signatures (RFC 5751 §3.5
//! multipart/signed), enveloped data with RSA key transport (RFC 5652 §6;
//! AES-GCM as AuthEnvelopedData, RFC 5083/5084), and compressed data
//! (RFC 3274, zlib) built here because OpenSSL is often compiled without zlib.
//!
//! Randomness: content-encryption keys and IVs come from OpenSSL's RNG inside
//! `CMS_encrypt`. Signing is deterministic given the signing time passed in.
//!
//! Per-partner switches (IBM Sterling needs them off): the SMIMECapabilities
//! signed attribute (RFC 5751 §2.5.2) and the CMSAlgorithmProtection attribute
//! (RFC 6211).

use std::ptr;

use foreign_types::ForeignType;
use openssl::asn1::Asn1Time;
use openssl::cms::CmsContentInfo;
use openssl::error::ErrorStack;
use openssl::stack::Stack;
use openssl::x509::X509;
use openssl_sys as ffi;

use super::algorithms::{DigestAlgorithm, EncryptionAlgorithm};
use super::certs::{KeyPair, ValidityPolicy};
use super::der;
use super::error::{As2Error, Result};

/// id-signedData.
pub const OID_SIGNED_DATA: &str = "1.2.840.113549.1.7.2";
/// id-envelopedData.
pub const OID_ENVELOPED_DATA: &str = "1.2.840.113549.1.7.3";
/// id-ct-authEnvelopedData (RFC 5083).
pub const OID_AUTH_ENVELOPED_DATA: &str = "1.2.840.113549.1.9.16.1.23";
/// id-ct-compressedData (RFC 3274).
pub const OID_COMPRESSED_DATA: &str = "1.2.840.113549.1.9.16.1.9";
/// id-alg-zlibCompress (RFC 3274).
pub const OID_ZLIB: &str = "1.2.840.113549.1.9.16.3.8";
/// id-data.
pub const OID_DATA: &str = "1.2.840.113549.1.7.1";
/// id-aa-CMSAlgorithmProtection (RFC 6211).
pub const OID_ALGORITHM_PROTECTION: &str = "1.2.840.113549.1.9.52";

#[allow(non_snake_case)]
extern "C" {
    fn CMS_add1_signer(
        cms: *mut ffi::CMS_ContentInfo,
        signer: *mut ffi::X509,
        pk: *mut ffi::EVP_PKEY,
        md: *const ffi::EVP_MD,
        flags: std::os::raw::c_uint,
    ) -> *mut std::ffi::c_void;
    fn CMS_signed_add1_attr_by_NID(
        si: *mut std::ffi::c_void,
        nid: std::os::raw::c_int,
        ty: std::os::raw::c_int,
        bytes: *const std::ffi::c_void,
        len: std::os::raw::c_int,
    ) -> std::os::raw::c_int;
    fn CMS_signed_add1_attr_by_OBJ(
        si: *mut std::ffi::c_void,
        obj: *const ffi::ASN1_OBJECT,
        ty: std::os::raw::c_int,
        bytes: *const std::ffi::c_void,
        len: std::os::raw::c_int,
    ) -> std::os::raw::c_int;
    fn CMS_SignerInfo_get0_algs(
        si: *mut std::ffi::c_void,
        pk: *mut *mut ffi::EVP_PKEY,
        signer: *mut *mut ffi::X509,
        pdig: *mut *mut ffi::X509_ALGOR,
        psig: *mut *mut ffi::X509_ALGOR,
    );
    fn i2d_X509_ALGOR(a: *const ffi::X509_ALGOR, out: *mut *mut u8) -> std::os::raw::c_int;
    fn ASN1_STRING_type(x: *const ffi::ASN1_STRING) -> std::os::raw::c_int;
}

fn ossl(what: &str) -> As2Error {
    As2Error::Crypto(format!("{what}: {}", ErrorStack::get()))
}

/// Options for a detached signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignOptions {
    /// The digest algorithm.
    pub digest: DigestAlgorithm,
    /// Include the SMIMECapabilities signed attribute (RFC 5751 §2.5.2).
    pub smime_capabilities: bool,
    /// Include the CMSAlgorithmProtection signed attribute (RFC 6211).
    pub algorithm_protection: bool,
    /// The signingTime attribute, unix seconds (the caller's clock).
    pub signing_time: i64,
}

/// Makes a detached CMS SignedData (DER) over `data` exactly as given (the
/// caller canonicalizes; `CMS_BINARY` stops OpenSSL from touching line ends).
pub fn sign_detached(data: &[u8], signer: &KeyPair, opts: &SignOptions) -> Result<Vec<u8>> {
    sign_detached_reader(&mut &data[..], signer, opts)
}

/// [`sign_detached`] over the content `content` gives (OpenSSL reads it through a BIO
/// and digests it as it streams by).
pub fn sign_detached_reader(
    content: &mut dyn std::io::Read,
    signer: &KeyPair,
    opts: &SignOptions,
) -> Result<Vec<u8>> {
    let mut flags = ffi::CMS_DETACHED | ffi::CMS_BINARY | ffi::CMS_PARTIAL;
    if !opts.smime_capabilities {
        flags |= ffi::CMS_NOSMIMECAP;
    }
    let mut chain = Stack::<X509>::new().map_err(|_| ossl("stack"))?;
    for c in &signer.chain {
        chain.push(c.clone()).map_err(|_| ossl("stack"))?;
    }
    let signing_time = Asn1Time::from_unix(opts.signing_time).map_err(|_| ossl("signing time"))?;
    // SAFETY: every pointer passed below is either owned by a live Rust
    // wrapper (cert, key, chain, signing_time, cms) or checked for NULL; the
    // CMS object is wrapped right after creation so it is freed on every path.
    unsafe {
        let raw = ffi::CMS_sign(
            ptr::null_mut(),
            ptr::null_mut(),
            chain.as_ptr(),
            ptr::null_mut(),
            flags,
        );
        if raw.is_null() {
            return Err(ossl("CMS_sign"));
        }
        let cms = CmsContentInfo::from_ptr(raw);
        let si = CMS_add1_signer(
            cms.as_ptr(),
            signer.cert.as_ptr(),
            signer.key.as_ptr(),
            opts.digest.message_digest().as_ptr(),
            flags,
        );
        if si.is_null() {
            return Err(ossl("CMS_add1_signer"));
        }
        let ty = ASN1_STRING_type(signing_time.as_ptr() as *const ffi::ASN1_STRING);
        if CMS_signed_add1_attr_by_NID(
            si,
            ffi::NID_pkcs9_signingTime,
            ty,
            signing_time.as_ptr() as *const std::ffi::c_void,
            -1,
        ) != 1
        {
            return Err(ossl("signingTime"));
        }
        if opts.algorithm_protection {
            let mut pdig: *mut ffi::X509_ALGOR = ptr::null_mut();
            let mut psig: *mut ffi::X509_ALGOR = ptr::null_mut();
            CMS_SignerInfo_get0_algs(si, ptr::null_mut(), ptr::null_mut(), &mut pdig, &mut psig);
            if pdig.is_null() || psig.is_null() {
                return Err(ossl("signer algorithms"));
            }
            let dig = algor_der(pdig)?;
            let sig = algor_der(psig)?;
            // CMSAlgorithmProtection ::= SEQUENCE { digestAlgorithm,
            //   signatureAlgorithm [1] IMPLICIT AlgorithmIdentifier OPTIONAL, ... }
            let (sig_tlv, _) = der::read_tlv(&sig)?;
            let mut content = dig;
            content.extend(der::encode_tlv(0xa1, sig_tlv.content));
            let value = der::encode_tlv(0x30, &content);
            let oid_c = std::ffi::CString::new(OID_ALGORITHM_PROTECTION)
                .map_err(|_| As2Error::Crypto("oid".into()))?;
            let obj = ffi::OBJ_txt2obj(oid_c.as_ptr(), 1);
            if obj.is_null() {
                return Err(ossl("OBJ_txt2obj"));
            }
            let vlen = std::os::raw::c_int::try_from(value.len()).unwrap_or(0);
            let ok = CMS_signed_add1_attr_by_OBJ(
                si,
                obj,
                ffi::V_ASN1_SEQUENCE,
                value.as_ptr() as *const std::ffi::c_void,
                vlen,
            );
            ffi::ASN1_OBJECT_free(obj);
            if ok != 1 {
                return Err(ossl("algorithm protection attribute"));
            }
        }
        super::cms_stream::finish_partial_reader(&cms, content, flags)
    }
}

/// # Safety
/// `a` must point to a valid `X509_ALGOR`.
unsafe fn algor_der(a: *const ffi::X509_ALGOR) -> Result<Vec<u8>> {
    let n = i2d_X509_ALGOR(a, ptr::null_mut());
    if n <= 0 {
        return Err(ossl("i2d_X509_ALGOR"));
    }
    let mut buf = vec![0u8; n as usize];
    let mut p = buf.as_mut_ptr();
    if i2d_X509_ALGOR(a, &mut p) != n {
        return Err(ossl("i2d_X509_ALGOR"));
    }
    Ok(buf)
}

/// What a signature check established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureInfo {
    /// The digest algorithm the signer used.
    pub digest: Option<DigestAlgorithm>,
    /// The subject of the partner certificate that verified it.
    pub signer: String,
    /// `false` when the certificate was outside its validity period at the
    /// verification time and the policy accepted that.
    pub certificate_valid: bool,
}

/// Verifies a detached signature over `content` held in memory: see
/// [`super::cms_stream::verify_detached_reader`], which this calls.
pub fn verify_detached(
    signature_der: &[u8],
    content: &[u8],
    partner_certs: &[X509],
    policy: ValidityPolicy,
) -> Result<SignatureInfo> {
    super::cms_stream::verify_detached_reader(
        signature_der,
        &mut { content },
        partner_certs,
        policy,
    )
}

/// Verifies an opaque (encapsulating) SignedData and returns its content.
pub fn verify_attached(
    signature_der: &[u8],
    partner_certs: &[X509],
    policy: ValidityPolicy,
) -> Result<(SignatureInfo, Vec<u8>)> {
    let mut content = Vec::new();
    let detached = super::cms_stream::open_content_info(signature_der)
        .and_then(|ci| ci.detach_signed_content(&mut content))
        .map_err(|e| As2Error::AuthenticationFailed(format!("signature is not CMS: {e}")))?;
    let info = verify_detached(&detached, &content, partner_certs, policy)?;
    Ok((info, content))
}

/// Encrypts `data` for `recipient` (RSA PKCS#1 v1.5 key transport). AES-GCM
/// gives AuthEnvelopedData; the others EnvelopedData. See
/// [`super::cms_stream::encrypt_stream`].
pub fn encrypt(data: &[u8], recipient: &X509, alg: EncryptionAlgorithm) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() + 1024);
    super::cms_stream::encrypt_stream(&mut &data[..], &mut out, recipient, alg, false)?;
    Ok(out)
}

/// Like [`encrypt`] with RSAES-OAEP key transport (RFC 3560; SHA-1 and
/// MGF1-SHA-1, the default parameters every implementation understands).
pub fn encrypt_oaep(data: &[u8], recipient: &X509, alg: EncryptionAlgorithm) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() + 1024);
    super::cms_stream::encrypt_stream(&mut &data[..], &mut out, recipient, alg, true)?;
    Ok(out)
}

/// Decrypts an EnvelopedData/AuthEnvelopedData held in memory with the first of `keys`
/// that opens it: see [`super::cms_stream::ContentInfoReader::decrypt_into`]. Returns the
/// content, the cipher, and the index of the key used.
pub fn decrypt(
    der_bytes: &[u8],
    keys: &[KeyPair],
) -> Result<(Vec<u8>, Option<EncryptionAlgorithm>, usize)> {
    let ci = super::cms_stream::open_content_info(der_bytes)
        .map_err(|e| As2Error::DecryptionFailed(format!("not a CMS envelope: {e}")))?;
    let mut plain = Vec::new();
    let (cipher, index) = ci.decrypt_into(keys, &mut plain)?;
    Ok((plain, cipher, index))
}

/// What a CMS blob is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmsKind {
    /// SignedData with these digest algorithms.
    Signed {
        /// Digest algorithms listed in the SignedData.
        digests: Vec<DigestAlgorithm>,
    },
    /// EnvelopedData or AuthEnvelopedData.
    Enveloped {
        /// The content cipher, if we know it.
        cipher: Option<EncryptionAlgorithm>,
        /// The content cipher's OID.
        cipher_oid: String,
        /// Whether it is AuthEnvelopedData (AES-GCM).
        authenticated: bool,
    },
    /// CompressedData.
    Compressed,
    /// Anything else (content type OID).
    Other(String),
}

/// Looks at the outer structure of a CMS blob without any cryptography.
pub fn inspect(der_bytes: &[u8]) -> Result<CmsKind> {
    let (oid, inner) = der::content_info(der_bytes)?;
    let kids = || der::children(inner.content);
    Ok(match oid.as_str() {
        OID_SIGNED_DATA => {
            let kids = kids()?;
            let mut digests = Vec::new();
            if let Some(set) = kids.get(1).filter(|t| t.tag == 0x31) {
                for alg in der::children(set.content)? {
                    if let Some(o) = der::children(alg.content)?.first() {
                        if let Some(d) = DigestAlgorithm::from_oid(&der::oid_to_string(o.content)?)
                        {
                            digests.push(d);
                        }
                    }
                }
            }
            CmsKind::Signed { digests }
        }
        OID_ENVELOPED_DATA | OID_AUTH_ENVELOPED_DATA => {
            let kids = kids()?;
            let eci = kids
                .iter()
                .skip_while(|t| t.tag != 0x31)
                .find(|t| t.tag == 0x30)
                .ok_or_else(|| As2Error::MalformedMime("envelope without content info".into()))?;
            let eci = der::children(eci.content)?;
            let alg = eci
                .get(1)
                .ok_or_else(|| As2Error::MalformedMime("envelope without algorithm".into()))?;
            let alg_oid = der::children(alg.content)?
                .first()
                .map(|o| der::oid_to_string(o.content))
                .transpose()?
                .unwrap_or_default();
            CmsKind::Enveloped {
                cipher: EncryptionAlgorithm::from_oid(&alg_oid),
                cipher_oid: alg_oid,
                authenticated: oid == OID_AUTH_ENVELOPED_DATA,
            }
        }
        OID_COMPRESSED_DATA => CmsKind::Compressed,
        other => CmsKind::Other(other.to_string()),
    })
}

/// The certificates a SignedData carries (for display and diagnosis only:
/// verification never trusts them).
pub fn embedded_certificates(der_bytes: &[u8]) -> Result<Vec<X509>> {
    let (oid, inner) = der::content_info(der_bytes)?;
    if oid != OID_SIGNED_DATA {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    if let Some(set) = der::children(inner.content)?.iter().find(|t| t.tag == 0xa0) {
        for c in der::children(set.content)? {
            if c.tag == 0x30 {
                if let Ok(x) = X509::from_der(c.raw) {
                    out.push(x);
                }
            }
        }
    }
    Ok(out)
}

/// Builds RFC 3274 CompressedData (zlib) around `data`: see
/// [`super::cms_stream::compress_stream`].
pub fn compress(data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    super::cms_stream::compress_stream(&mut &data[..], &mut out, std::io::Cursor::new(Vec::new()))?;
    Ok(out)
}

/// Undoes RFC 3274 CompressedData held in memory; output larger than `max_len` is refused
/// (decompression bombs): see [`super::cms_stream::ContentInfoReader::decompress_into`].
pub fn decompress(der_bytes: &[u8], max_len: usize) -> Result<Vec<u8>> {
    let ci = super::cms_stream::open_content_info(der_bytes)
        .map_err(|e| As2Error::DecompressionFailed(e.to_string()))?;
    let mut plain = Vec::new();
    ci.decompress_into(&mut plain, max_len as u64)?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_empty() {
        for data in [&b""[..], b"hello", &vec![7u8; 3 << 20]] {
            let c = compress(data).unwrap();
            assert_eq!(decompress(&c, data.len()).unwrap(), data);
            assert!(data.is_empty() || decompress(&c, data.len() - 1).is_err());
        }
    }

    #[test]
    fn a_bomb_stops_at_the_bound_and_writes_no_more() {
        // 256 MiB of zeros in about 256 KiB.
        let bomb = compress(&vec![0u8; 256 << 20]).unwrap();
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let limit = 5 << 20;
        let mut out = Vec::new();
        let err = super::super::cms_stream::open_content_info(&bomb[..])
            .unwrap()
            .decompress_into(&mut out, limit as u64)
            .unwrap_err();
        assert!(matches!(err, As2Error::DecompressionFailed(_)), "{err}");
        assert!(err.to_string().contains("larger than the limit"), "{err}");
        assert!(
            out.len() <= limit + super::super::stream::CHUNK,
            "wrote {} bytes, the limit is {limit}",
            out.len()
        );
    }

    #[test]
    fn truncated_or_corrupt_streams_are_errors() {
        let data = random_ish(200_000);
        let c = compress(&data).unwrap();
        for cut in [1, 10, 100, c.len() / 2, c.len() - 1] {
            assert!(decompress(&c[..cut], 1 << 30).is_err(), "cut at {cut}");
        }
        let mut bad = c.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        bad[mid + 1] ^= 0xff;
        assert!(decompress(&bad, 1 << 30).is_err());
        assert_eq!(decompress(&c, 1 << 30).unwrap(), data);
    }

    fn random_ish(n: usize) -> Vec<u8> {
        let mut x: u32 = 12345;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect()
    }
}

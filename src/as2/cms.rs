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
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::error::ErrorStack;
use openssl::stack::Stack;
use openssl::x509::X509;
use openssl_sys as ffi;

use super::algorithms::{DigestAlgorithm, EncryptionAlgorithm};
use super::certs::{check_validity, subject_of, KeyPair, ValidityPolicy};
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
    fn CMS_final(
        cms: *mut ffi::CMS_ContentInfo,
        data: *mut ffi::BIO,
        dcont: *mut ffi::BIO,
        flags: std::os::raw::c_uint,
    ) -> std::os::raw::c_int;
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
    fn CMS_add1_recipient_cert(
        cms: *mut ffi::CMS_ContentInfo,
        recip: *mut ffi::X509,
        flags: std::os::raw::c_uint,
    ) -> *mut std::ffi::c_void;
    fn CMS_RecipientInfo_get0_pkey_ctx(ri: *mut std::ffi::c_void) -> *mut ffi::EVP_PKEY_CTX;
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

/// Completes a CMS structure made with `CMS_PARTIAL` over `data` (`len` bytes) and
/// returns its DER.
///
/// # Safety
/// `cms` must be a live structure made with `CMS_PARTIAL` and `flags`, and `len` must be
/// `data.len()`.
unsafe fn finish_partial(
    cms: &CmsContentInfo,
    data: &[u8],
    len: std::os::raw::c_int,
    flags: std::os::raw::c_uint,
) -> Result<Vec<u8>> {
    let bio = ffi::BIO_new_mem_buf(data.as_ptr() as *const std::ffi::c_void, len);
    if bio.is_null() {
        return Err(ossl("BIO_new_mem_buf"));
    }
    let ok = CMS_final(cms.as_ptr(), bio, ptr::null_mut(), flags);
    ffi::BIO_free_all(bio);
    if ok != 1 {
        return Err(ossl("CMS_final"));
    }
    cms.to_der().map_err(|_| ossl("i2d CMS"))
}

/// Makes a detached CMS SignedData (DER) over `data` exactly as given (the
/// caller canonicalizes; `CMS_BINARY` stops OpenSSL from touching line ends).
pub fn sign_detached(data: &[u8], signer: &KeyPair, opts: &SignOptions) -> Result<Vec<u8>> {
    let mut flags = ffi::CMS_DETACHED | ffi::CMS_BINARY | ffi::CMS_PARTIAL;
    if !opts.smime_capabilities {
        flags |= ffi::CMS_NOSMIMECAP;
    }
    let mut chain = Stack::<X509>::new().map_err(|_| ossl("stack"))?;
    for c in &signer.chain {
        chain.push(c.clone()).map_err(|_| ossl("stack"))?;
    }
    let len = std::os::raw::c_int::try_from(data.len())
        .map_err(|_| As2Error::InvalidInput("content too large to sign".into()))?;
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
        finish_partial(&cms, data, len, flags)
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

/// Verifies a detached signature over `content` with the partner's
/// configured certificate(s) only (certificates inside the message are not
/// trusted: `CMS_NOINTERN`; the partner certificate is pinned, so no chain
/// building). Content mismatch → [`As2Error::IntegrityCheckFailed`]; any
/// other failure → [`As2Error::AuthenticationFailed`].
pub fn verify_detached(
    signature_der: &[u8],
    content: &[u8],
    partner_certs: &[X509],
    policy: ValidityPolicy,
) -> Result<SignatureInfo> {
    verify_inner(signature_der, Some(content), partner_certs, policy).map(|(i, _)| i)
}

/// Verifies an opaque (encapsulating) SignedData and returns its content.
pub fn verify_attached(
    signature_der: &[u8],
    partner_certs: &[X509],
    policy: ValidityPolicy,
) -> Result<(SignatureInfo, Vec<u8>)> {
    verify_inner(signature_der, None, partner_certs, policy)
}

fn verify_inner(
    signature_der: &[u8],
    content: Option<&[u8]>,
    partner_certs: &[X509],
    policy: ValidityPolicy,
) -> Result<(SignatureInfo, Vec<u8>)> {
    let digest = match inspect(signature_der) {
        Ok(CmsKind::Signed { digests }) => digests.first().copied(),
        Ok(_) => {
            return Err(As2Error::AuthenticationFailed(
                "signature part is not CMS SignedData".into(),
            ))
        }
        Err(e) => {
            return Err(As2Error::AuthenticationFailed(format!(
                "signature part is not CMS: {e}"
            )))
        }
    };
    if partner_certs.is_empty() {
        return Err(As2Error::AuthenticationFailed(
            "no partner certificate configured to verify with".into(),
        ));
    }
    let mut last_err = None;
    for cert in partner_certs {
        let mut cms = CmsContentInfo::from_der(signature_der)
            .map_err(|e| As2Error::AuthenticationFailed(format!("signature is not CMS: {e}")))?;
        let mut stack = Stack::<X509>::new().map_err(|_| ossl("stack"))?;
        stack.push(cert.clone()).map_err(|_| ossl("stack"))?;
        let flags = CMSOptions::BINARY | CMSOptions::NOINTERN | CMSOptions::NO_SIGNER_CERT_VERIFY;
        let mut out = Vec::new();
        match cms.verify(Some(&stack), None, content, Some(&mut out), flags) {
            Ok(()) => {
                let valid = check_validity(cert, policy)?;
                return Ok((
                    SignatureInfo {
                        digest,
                        signer: subject_of(cert),
                        certificate_valid: valid,
                    },
                    out,
                ));
            }
            Err(e) => {
                let text = e.to_string();
                let err = if text.contains("content verify error")
                    || text.contains("digest")
                    || text.contains("CONTENT_VERIFY")
                {
                    As2Error::IntegrityCheckFailed(text)
                } else if text.contains("signer certificate not found") {
                    As2Error::AuthenticationFailed(format!(
                        "not signed by the partner certificate {}",
                        subject_of(cert)
                    ))
                } else {
                    As2Error::AuthenticationFailed(text)
                };
                // Prefer the most specific error across candidate certificates.
                last_err = match (last_err, err) {
                    (Some(As2Error::IntegrityCheckFailed(t)), _) => {
                        Some(As2Error::IntegrityCheckFailed(t))
                    }
                    (_, e) => Some(e),
                };
            }
        }
    }
    Err(last_err.unwrap_or_else(|| As2Error::AuthenticationFailed("no certificate".into())))
}

/// Encrypts `data` for `recipient` (RSA PKCS#1 v1.5 key transport). AES-GCM
/// gives AuthEnvelopedData; the others EnvelopedData.
pub fn encrypt(data: &[u8], recipient: &X509, alg: EncryptionAlgorithm) -> Result<Vec<u8>> {
    let mut stack = Stack::<X509>::new().map_err(|_| ossl("stack"))?;
    stack.push(recipient.clone()).map_err(|_| ossl("stack"))?;
    let cms = CmsContentInfo::encrypt(&stack, data, alg.cipher(), CMSOptions::BINARY)
        .map_err(|e| As2Error::Crypto(format!("CMS_encrypt: {e}")))?;
    cms.to_der()
        .map_err(|e| As2Error::Crypto(format!("i2d CMS: {e}")))
}

/// Like [`encrypt`] with RSAES-OAEP key transport (RFC 3560; SHA-1 and
/// MGF1-SHA-1, the default parameters every implementation understands).
pub fn encrypt_oaep(data: &[u8], recipient: &X509, alg: EncryptionAlgorithm) -> Result<Vec<u8>> {
    let flags = ffi::CMS_BINARY | ffi::CMS_PARTIAL | ffi::CMS_KEY_PARAM;
    let len = std::os::raw::c_int::try_from(data.len())
        .map_err(|_| As2Error::InvalidInput("content too large to encrypt".into()))?;
    // SAFETY: the CMS object is wrapped at once (freed on every path); the
    // recipient certificate outlives the calls; the BIO is freed after use;
    // the key context belongs to the recipient info inside `cms`.
    unsafe {
        let raw = ffi::CMS_encrypt(
            ptr::null_mut(),
            ptr::null_mut(),
            alg.cipher().as_ptr(),
            flags,
        );
        if raw.is_null() {
            return Err(ossl("CMS_encrypt"));
        }
        let cms = CmsContentInfo::from_ptr(raw);
        let ri = CMS_add1_recipient_cert(cms.as_ptr(), recipient.as_ptr(), flags);
        if ri.is_null() {
            return Err(ossl("CMS_add1_recipient_cert"));
        }
        let pctx = CMS_RecipientInfo_get0_pkey_ctx(ri);
        if pctx.is_null()
            || ffi::EVP_PKEY_CTX_set_rsa_padding(pctx, ffi::RSA_PKCS1_OAEP_PADDING) <= 0
        {
            return Err(ossl("RSA-OAEP padding"));
        }
        finish_partial(&cms, data, len, flags)
    }
}

/// Decrypts an EnvelopedData/AuthEnvelopedData with the first of `keys` that
/// opens it. Returns the content, the cipher, and the index of the key used.
pub fn decrypt(
    der_bytes: &[u8],
    keys: &[KeyPair],
) -> Result<(Vec<u8>, Option<EncryptionAlgorithm>, usize)> {
    let cipher = match inspect(der_bytes) {
        Ok(CmsKind::Enveloped { cipher, .. }) => cipher,
        Ok(other) => {
            return Err(As2Error::DecryptionFailed(format!(
                "expected enveloped data, found {other:?}"
            )))
        }
        Err(e) => {
            return Err(As2Error::DecryptionFailed(format!(
                "not a CMS envelope: {e}"
            )))
        }
    };
    if keys.is_empty() {
        return Err(As2Error::DecryptionFailed(
            "no station key configured".into(),
        ));
    }
    let cms = CmsContentInfo::from_der(der_bytes)
        .map_err(|e| As2Error::DecryptionFailed(format!("not a CMS envelope: {e}")))?;
    let mut last = String::new();
    for (i, kp) in keys.iter().enumerate() {
        match cms.decrypt(&kp.key, &kp.cert) {
            Ok(plain) => return Ok((plain, cipher, i)),
            Err(e) => last = e.to_string(),
        }
    }
    Err(As2Error::DecryptionFailed(format!(
        "no configured key opens the envelope: {last}"
    )))
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

/// Builds RFC 3274 CompressedData (zlib) around `data`.
pub fn compress(data: &[u8]) -> Result<Vec<u8>> {
    use flate2::write::ZlibEncoder;
    use std::io::Write;
    let mut enc = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data)
        .map_err(|e| As2Error::Crypto(format!("zlib: {e}")))?;
    let z = enc
        .finish()
        .map_err(|e| As2Error::Crypto(format!("zlib: {e}")))?;
    let alg = der::encode_tlv(0x30, &der::encode_oid(OID_ZLIB));
    let mut encap = der::encode_oid(OID_DATA);
    encap.extend(der::encode_tlv(0xa0, &der::encode_tlv(0x04, &z)));
    let mut cd = der::encode_tlv(0x02, &[0]);
    cd.extend(alg);
    cd.extend(der::encode_tlv(0x30, &encap));
    let mut ci = der::encode_oid(OID_COMPRESSED_DATA);
    ci.extend(der::encode_tlv(0xa0, &der::encode_tlv(0x30, &cd)));
    Ok(der::encode_tlv(0x30, &ci))
}

/// Undoes RFC 3274 CompressedData; output larger than `max_len` is refused
/// (decompression bombs).
pub fn decompress(der_bytes: &[u8], max_len: usize) -> Result<Vec<u8>> {
    decompress_within(der_bytes, max_len, &|_| true)
}

/// The output buffer of [`decompress_within`] grows by at most this much at a time, so
/// that the memory asked for is never far ahead of what was inflated.
pub const DECOMPRESS_STEP: usize = 1 << 20;

/// [`decompress`], asking `grow(total)` before its output buffer may hold `total` bytes
/// (growing in steps of at most [`DECOMPRESS_STEP`]); `false` stops it with
/// [`As2Error::DecompressionFailed`]. Inflating stops as soon as the output passes
/// `max_len`: a bomb costs at most `max_len` + one step, never its inflated size.
pub fn decompress_within(
    der_bytes: &[u8],
    max_len: usize,
    grow: &dyn Fn(usize) -> bool,
) -> Result<Vec<u8>> {
    let fail = |m: String| As2Error::DecompressionFailed(m);
    let (oid, inner) = der::content_info(der_bytes).map_err(|e| fail(e.to_string()))?;
    if oid != OID_COMPRESSED_DATA {
        return Err(fail(format!("not compressed-data but {oid}")));
    }
    let kids = der::children(inner.content).map_err(|e| fail(e.to_string()))?;
    let alg = kids.get(1).ok_or_else(|| fail("no algorithm".into()))?;
    let alg_oid = der::children(alg.content)
        .ok()
        .and_then(|c| c.first().and_then(|o| der::oid_to_string(o.content).ok()))
        .unwrap_or_default();
    if alg_oid != OID_ZLIB {
        return Err(fail(format!("unsupported compression algorithm {alg_oid}")));
    }
    let encap = kids.get(2).ok_or_else(|| fail("no content".into()))?;
    let encap = der::children(encap.content).map_err(|e| fail(e.to_string()))?;
    let explicit = encap
        .get(1)
        .filter(|t| t.tag == 0xa0)
        .ok_or_else(|| fail("compressed content absent".into()))?;
    let octets = der::children(explicit.content).map_err(|e| fail(e.to_string()))?;
    let octets = octets.first().ok_or_else(|| fail("empty content".into()))?;
    let z = der::octet_string(octets).map_err(|e| fail(e.to_string()))?;
    inflate_within(&z, max_len, grow).map_err(fail)
}

/// Inflates a zlib stream into a buffer that never holds more than `max_len` + 1 bytes.
fn inflate_within(
    z: &[u8],
    max_len: usize,
    grow: &dyn Fn(usize) -> bool,
) -> std::result::Result<Vec<u8>, String> {
    use flate2::{Decompress, FlushDecompress, Status};
    let too_big = || {
        format!(
            "the decompressed content is larger than the limit of {max_len} bytes for this \
             message (a compression bomb, or a message to send in smaller pieces)"
        )
    };
    let ceiling = max_len.saturating_add(1);
    let mut d = Decompress::new(true);
    let mut out: Vec<u8> = Vec::new();
    loop {
        if out.len() == out.capacity() {
            if out.len() >= ceiling {
                return Err(too_big());
            }
            let step = out.len().clamp(64 << 10, DECOMPRESS_STEP);
            let want = out.len().saturating_add(step).min(ceiling);
            if !grow(want) {
                return Err(format!(
                    "no memory left for {want} decompressed bytes; try again later"
                ));
            }
            out.reserve_exact(want - out.len());
        }
        let consumed = usize::try_from(d.total_in()).unwrap_or(usize::MAX);
        let input = z.get(consumed..).unwrap_or(&[]);
        let before = (d.total_in(), out.len());
        let status = d
            .decompress_vec(input, &mut out, FlushDecompress::None)
            .map_err(|e| format!("zlib: {e}"))?;
        if out.len() > max_len {
            return Err(too_big());
        }
        match status {
            Status::StreamEnd => return Ok(out),
            Status::Ok | Status::BufError => {
                // Neither input taken nor output made, with room to spare: the stream
                // ends before its end marker.
                if (d.total_in(), out.len()) == before && out.len() < out.capacity() {
                    return Err("zlib: the compressed data is truncated".into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn round_trip_and_empty() {
        for data in [&b""[..], b"hello", &vec![7u8; 3 << 20]] {
            let c = compress(data).unwrap();
            assert_eq!(decompress(&c, data.len()).unwrap(), data);
        }
    }

    #[test]
    fn a_bomb_stops_at_the_bound_and_never_asks_for_more() {
        // 256 MiB of zeros in about 256 KiB.
        let bomb = compress(&vec![0u8; 256 << 20]).unwrap();
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let asked = AtomicUsize::new(0);
        let limit = 5 << 20;
        let err = decompress_within(&bomb, limit, &|total| {
            asked.fetch_max(total, Ordering::Relaxed);
            true
        })
        .unwrap_err();
        assert!(matches!(err, As2Error::DecompressionFailed(_)), "{err}");
        assert!(err.to_string().contains("larger than the limit"), "{err}");
        let asked = asked.load(Ordering::Relaxed);
        assert!(
            asked <= limit + 1,
            "asked for {asked} bytes, the limit is {limit}"
        );
    }

    #[test]
    fn the_memory_callback_can_stop_it() {
        let c = compress(&vec![1u8; 4 << 20]).unwrap();
        let calls = AtomicUsize::new(0);
        let err = decompress_within(&c, 100 << 20, &|total| {
            calls.fetch_add(1, Ordering::Relaxed);
            total <= 2 << 20
        })
        .unwrap_err();
        assert!(err.to_string().contains("no memory left"), "{err}");
        // Steps are bounded, so the callback sees the growth, not one huge request.
        assert!(calls.load(Ordering::Relaxed) >= 3);
        assert_eq!(
            decompress_within(&c, 4 << 20, &|t| t <= (4 << 20) + 1)
                .unwrap()
                .len(),
            4 << 20
        );
    }

    #[test]
    fn truncated_or_corrupt_streams_are_errors() {
        let c = compress(&random_ish(200_000)).unwrap();
        // Cut inside the zlib stream: rebuild the envelope around a truncated stream.
        let (_, inner) = der::content_info(&c).unwrap();
        let kids = der::children(inner.content).unwrap();
        let encap = der::children(kids[2].content).unwrap();
        let oct = der::children(encap[1].content).unwrap();
        let z = der::octet_string_bytes(&oct[0]).unwrap();
        assert!(inflate_within(&z[..z.len() / 2], 1 << 30, &|_| true).is_err());
        let mut bad = z.clone();
        bad[10] ^= 0xff;
        bad[11] ^= 0xff;
        assert!(inflate_within(&bad, 1 << 30, &|_| true).is_err());
        assert!(decompress(&c[..c.len() - 10], 1 << 30).is_err());
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

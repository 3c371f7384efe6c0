import NIOCore
import NIOSSL
import X509

extension CertificateNames {
    /// The names of the client certificate the TLS handler of `pipeline` verified; nil on a plain TCP
    /// connection or when the client presented no certificate.
    static func ofPeer(_ pipeline: ChannelPipeline.SynchronousOperations) -> CertificateNames? {
        guard let certificate = try? pipeline.nioSSL_peerCertificate() else { return nil }
        return CertificateNames(certificate)
    }

    init(_ certificate: NIOSSLCertificate) {
        var names = CertificateNames(commonName: certificate.subjectName.last { $0.type == .commonName }?.value)
        if let der = try? certificate.toDERBytes(), let parsed = try? Certificate(derEncoded: der),
            let alternatives = try? parsed.extensions.subjectAlternativeNames
        {
            for name in alternatives {
                switch name {
                case .dnsName(let value), .rfc822Name(let value), .uniformResourceIdentifier(let value): names.alternativeNames.append(value)
                default: break
                }
            }
        }
        self = names
    }
}

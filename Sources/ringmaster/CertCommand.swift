import ArgumentParser
import Foundation
import RingmasterSecurity

struct CertCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cert",
        abstract: "Issue certificates from the coordinator's CA (run on the coordinator host).",
        subcommands: [Issue.self]
    )

    struct Issue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "issue",
            abstract: "Issue an operator certificate for the CLI's admin requests."
        )

        @Option(help: "Role of the certificate; agents join with a token instead, so only `operator` is issued here.")
        var role: String = PeerIdentity.Role.operator.rawValue

        @Option(help: "Name of the operator (lowercase letters, digits, '-').")
        var name: String

        @Option(help: "The coordinator's state directory (holds the CA).")
        var stateDir: String

        @Option(help: "Directory to write key.pem, cert.pem and ca.pem into (created 0700).")
        var out: String = OperatorOptions.defaultIdentityDirectory

        @Option(help: "Lifetime of the certificate, e.g. 30d.")
        var ttl: DurationArgument = DurationArgument(seconds: 30 * 86400)

        func validate() throws {
            guard self.role == PeerIdentity.Role.operator.rawValue else {
                throw ValidationError(
                    "--role \(self.role) is not issued here: use --role operator; agents join with `ringmaster token create`"
                )
            }
        }

        func run() async throws {
            guard let authority = try CertificateAuthority.load(directory: self.stateDir) else {
                throw ValidationError(
                    "\(self.stateDir) holds no CA: start the coordinator with --state-dir \(self.stateDir) once first")
            }
            let identity = try PeerIdentity(role: .operator, name: self.name)
            let key = KeyAndRequest.makeKey()
            let now = Date()
            let certificate = try authority.issue(
                publicKey: key.publicKey,
                identity: identity,
                notBefore: now.addingTimeInterval(-60),
                notAfter: now.addingTimeInterval(self.ttl.seconds)
            )
            let credentials = try Credentials(
                privateKey: key, certificate: certificate, caCertificate: authority.certificate)
            try credentials.save(directory: self.out)
            print("issued \(identity) certificate valid until \(certificate.notValidAfter) into \(self.out)")
        }
    }
}

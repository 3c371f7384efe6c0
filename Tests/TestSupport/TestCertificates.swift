#if canImport(Glibc)
import Glibc
#endif
import Foundation

extension ProcessScope {
    /// Runs a command to completion (mosquitto_pub, openssl, python) and returns its exit status and output.
    public func run(
        _ name: String, _ executable: String, _ arguments: [String], environment: [String: String] = [:],
        timeout: Duration = .seconds(60)
    ) async throws -> (ChildProcess.ExitStatus, String) {
        let process = try launch(name: name, executable: executable, arguments: arguments, environment: environment)
        guard let status = await process.waitForExit(timeout: timeout) else {
            process.send(SIGKILL)
            throw HarnessError("\(name) did not finish within \(timeout):\n\(process.logTail())")
        }
        return (status, process.logText())
    }
}

/// Test certificates made with openssl in a scope's folder: a CA (`ca.pem`, `ca.key`), a server certificate
/// for 127.0.0.1 and localhost (`server.pem`, `server.key`) and a client certificate with CN=device-1
/// (`client.pem`, `client.key`), valid one day, readable by every user.
public enum TestCertificates {
    public static let script = """
        set -e
        cd "$1"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=test-ca 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > san.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile san.ext 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=device-1 2>/dev/null
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 1 2>/dev/null
        # mosquitto started as root drops to its own user: it must be able to read these (test keys only).
        chmod 644 ./*.key ./*.pem
        """

    /// Runs `script` (plus `extra` shell lines) in the scope's log folder and returns that folder.
    public static func make(_ scope: ProcessScope, extra: String = "") async throws -> String {
        let directory = scope.logDirectory
        let path = directory + "/certificates.sh"
        try (script + "\n" + extra + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        let (status, output) = try await scope.run("openssl", "/bin/sh", [path, directory])
        guard status == .exited(0) else { throw HarnessError("making test certificates failed: \(output)") }
        return directory
    }
}

import ArgumentParser
import Foundation
import Logging

/// The shared start of every Tributary executable: parse the command line, and on a usage problem print one
/// line (`edge-agent: error: ...`) and exit 2; `--help` and `--version` print and exit 0. After parsing, a
/// `ConfigError` from loading the configuration also exits 2, any other start-up failure exits 1.
public enum CommandLineEntry {
    public static func main<Root: ParsableCommand>(_ root: Root.Type, arguments: [String]? = nil) async -> Never {
        let name = Root.configuration.commandName ?? "tributary"
        var command: any ParsableCommand
        do {
            command = try Root.parseAsRoot(arguments)
        } catch {
            let code = Root.exitCode(for: error)
            if code == .success {
                printHelpOrVersion(Root.self, for: error)
                exit(0)
            }
            let message = Root.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            FileHandle.standardError.write(Data("\(name): error: \(message) (see \(name) --help)\n".utf8))
            exit(2)
        }
        do {
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            exit(0)
        } catch let error as ConfigError {
            FileHandle.standardError.write(Data("\(name): error: \(error)\n".utf8))
            exit(2)
        } catch let exitCode as ExitCode {
            exit(exitCode.rawValue)
        } catch {
            // ArgumentParser's own errors can surface from run() too (help for a command group, ValidationError).
            switch Root.exitCode(for: error) {
            case .success:
                printHelpOrVersion(Root.self, for: error)
                exit(0)
            case .validationFailure:
                let message = Root.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
                FileHandle.standardError.write(Data("\(name): error: \(message)\n".utf8))
                exit(2)
            default:
                FileHandle.standardError.write(Data("\(name): error: \(error)\n".utf8))
                exit(1)
            }
        }
    }
}

extension CommandLineEntry {
    /// Prints help or version. The root's help also shows its default subcommand's options, so that
    /// `device-sim --help` documents `device-sim --clients ...` and not only the list of subcommands.
    static func printHelpOrVersion<Root: ParsableCommand>(_ root: Root.Type, for error: any Error) {
        let message = Root.fullMessage(for: error)
        print(message)
        let name = Root.configuration.commandName ?? ""
        if let defaultSubcommand = Root.configuration.defaultSubcommand, message.contains("USAGE: \(name) <subcommand>") {
            print("\nOPTIONS OF THE DEFAULT SUBCOMMAND '\(defaultSubcommand.configuration.commandName ?? "")':\n")
            print(Root.helpMessage(for: defaultSubcommand))
        }
    }
}

/// Options every long-running Tributary process shares. `--set KEY=VALUE` reaches every configuration key,
/// including those without a dedicated flag.
public struct CommonOptions: ParsableArguments, Sendable {
    @Option(name: .customLong("config"), help: ArgumentHelp("YAML configuration file.", valueName: "FILE"))
    public var configFile: String?

    @Option(name: .customLong("set"), help: ArgumentHelp("Set any configuration key (repeatable).", valueName: "KEY=VALUE"))
    public var assignments: [String] = []

    @Option(name: .customLong("http-listen"), help: ArgumentHelp("Serve /metrics, /health and /ready here (http.listen).", valueName: "HOST:PORT"))
    public var httpListen: String?

    @Option(name: .customLong("log-level"), help: ArgumentHelp("trace, debug, info, notice, warning, error or critical (log.level).", valueName: "LEVEL"))
    public var logLevel: String?

    @Flag(name: .customLong("check-config"), help: "Validate the configuration, print it and exit (0 if valid, 2 if not).")
    public var checkConfig = false

    public init() {}

    /// `--set` assignments plus the shared flags, as configuration keys.
    public func overrides() throws(ConfigError) -> [String: String] {
        var result: [String: String] = [:]
        for assignment in assignments {
            guard let equals = assignment.firstIndex(of: "="), equals != assignment.startIndex else {
                throw ConfigError(origin: "--set", "expected KEY=VALUE, got '\(assignment)'")
            }
            result[String(assignment[..<equals])] = String(assignment[assignment.index(after: equals)...])
        }
        if let httpListen { result["http.listen"] = httpListen }
        if let logLevel { result["log.level"] = logLevel }
        return result
    }
}

extension CommonOptions {
    /// The merged configuration: `flags` (dedicated flags, keyed by configuration key; nil = not given) and
    /// `--set`, then the environment, the `--config` file and the defaults.
    public func loadValues(keys: [ConfigKey], flags: [String: String?]) throws(ConfigError) -> ConfigValues {
        var merged = try overrides()
        for (key, value) in flags {
            if let value { merged[key] = value }
        }
        return try ConfigValues.load(keys: keys, file: configFile, overrides: merged)
    }

    /// With `--check-config`, prints the validated configuration and returns false (the process should
    /// exit); otherwise sets up logging and metrics for the process and returns true.
    public func startObservability(_ values: ConfigValues) throws(ConfigError) -> Bool {
        if checkConfig {
            print(values.rendered())
            return false
        }
        Observability.bootstrap(logLevel: try values.logLevel())
        return true
    }
}

extension ConfigKey {
    /// The part of a command's `--help` that says how keys are set and lists every key with its default.
    public static func helpText(for keys: [ConfigKey]) -> String {
        """
        Every flag is also a configuration key: set it in the YAML file given with --config, with the \
        environment variable TRIBUTARY_<KEY> (dots become underscores), or with --set KEY=VALUE. \
        Precedence: flags, then environment, then file, then defaults. Keys:
        """ + "\n" + keys.map { key in
            "  \(key.name)\(key.defaultValue.map { " (default \($0))" } ?? ""): \(key.help)"
        }.joined(separator: "\n")
    }

    /// Keys shared by every process.
    public static let common: [ConfigKey] = [
        ConfigKey("http.listen", default: "127.0.0.1:9100", help: "Address of the /metrics, /health and /ready endpoints."),
        ConfigKey("log.level", default: "info", help: "Log level: trace, debug, info, notice, warning, error, critical."),
    ]
}

extension ConfigValues {
    public func logLevel() throws(ConfigError) -> Logger.Level {
        let entry = raw("log.level")
        let text = entry?.value ?? "info"
        guard let level = Logger.Level(rawValue: text) else {
            throw ConfigError(key: "log.level", origin: entry?.origin, "expected trace, debug, info, notice, warning, error or critical, got '\(text)'")
        }
        return level
    }
}

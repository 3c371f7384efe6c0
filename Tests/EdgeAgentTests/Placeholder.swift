// Placeholder so the target exists until its first real test lands; delete when adding tests.
import Testing

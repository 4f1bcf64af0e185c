import Testing

@testable import Coordinator

@Suite("Connection budget")
struct ConnectionBudgetTests {
    static let limits = ConnectionBudget.Limits(
        maximumConnections: 6, maximumUnauthenticated: 4, maximumUnauthenticatedPerAddress: 2)

    func admitted(_ budget: inout ConnectionBudget, _ address: String) throws -> ConnectionBudget.Ticket {
        let admission = try budget.admit(from: address).get()
        #expect(admission.displaced == nil)
        return admission.ticket
    }

    @Test func oneAddress_getsItsShareOfUnauthenticatedSlots_andOthersStillGetIn() throws {
        var budget = ConnectionBudget(limits: Self.limits)
        _ = try self.admitted(&budget, "10.0.0.9")
        _ = try self.admitted(&budget, "10.0.0.9")
        #expect(throws: ConnectionBudget.Refusal.tooManyFromAddress) { try budget.admit(from: "10.0.0.9").get() }
        _ = try self.admitted(&budget, "10.0.0.1")
        _ = try self.admitted(&budget, "10.0.0.2")
        #expect(budget.unauthenticated == 4 && budget.connections == 4)
    }

    @Test func onlyIdleConnectionsAreDisplaced_andWithNoneIdleTheNewcomerIsRefused() throws {
        var budget = ConnectionBudget(limits: Self.limits)
        let joiner = try self.admitted(&budget, "10.0.0.1")
        budget.handshakeCompletedWithoutCertificate(joiner)
        budget.joining(joiner)
        let handshaking = try self.admitted(&budget, "10.0.0.2")
        let idle = try self.admitted(&budget, "10.0.0.3")
        budget.handshakeCompletedWithoutCertificate(idle)
        _ = try self.admitted(&budget, "10.0.0.4")
        // Full: the idle one goes, although two are older.
        #expect(try budget.admit(from: "10.0.0.5").get().displaced == idle)
        // None idle now: a handshake or a join under way is never cut short; the newcomer is refused.
        #expect(throws: ConnectionBudget.Refusal.tooManyUnauthenticated) { try budget.admit(from: "10.0.0.6").get() }
        #expect(budget.unauthenticated == 4)
        #expect(budget.open[joiner.id] != nil && budget.open[handshaking.id] != nil)
    }

    @Test func aFloodFromManyAddresses_displacesTheOldestUnauthenticated_notTheNewcomer() throws {
        var budget = ConnectionBudget(limits: Self.limits)
        let first = try self.admitted(&budget, "10.0.0.1")
        let second = try self.admitted(&budget, "10.0.0.2")
        let third = try self.admitted(&budget, "10.0.0.3")
        let authenticated = try self.admitted(&budget, "10.0.0.4")
        budget.authenticated(authenticated)
        let fifth = try self.admitted(&budget, "10.0.0.5")
        for ticket in [first, second, third, fifth] { budget.handshakeCompletedWithoutCertificate(ticket) }
        // Every unauthenticated slot is taken: a newcomer takes the oldest one's.
        let newcomer = try budget.admit(from: "10.0.0.6").get()
        #expect(newcomer.displaced == first)
        #expect(try budget.admit(from: "10.0.0.7").get().displaced == second)
        #expect(budget.unauthenticated == 4, "the cap holds")
        // The displaced one's close, when it comes, changes nothing more.
        budget.closed(first)
        #expect(budget.unauthenticated == 4 && budget.connections == 5)
    }

    @Test func anAuthenticatedConnection_freesItsUnauthenticatedSlot_butCountsUntilItCloses() throws {
        var budget = ConnectionBudget(limits: Self.limits)
        var tickets: [ConnectionBudget.Ticket] = []
        for index in 0..<6 {
            let ticket = try self.admitted(&budget, "10.0.0.\(index)")
            budget.authenticated(ticket)
            tickets.append(ticket)
        }
        #expect(budget.unauthenticated == 0)
        #expect(throws: ConnectionBudget.Refusal.tooManyConnections) { try budget.admit(from: "10.0.0.7").get() }
        budget.closed(tickets[0])
        _ = try self.admitted(&budget, "10.0.0.7")
        #expect(budget.connections == 6 && budget.unauthenticated == 1)
    }

    @Test func closingTwice_orAuthenticatingAfterClose_changesNothing() throws {
        var budget = ConnectionBudget(limits: Self.limits)
        let ticket = try self.admitted(&budget, "10.0.0.1")
        budget.closed(ticket)
        budget.closed(ticket)
        budget.authenticated(ticket)
        #expect(budget.connections == 0 && budget.unauthenticated == 0)
        _ = try self.admitted(&budget, "10.0.0.1")
        _ = try self.admitted(&budget, "10.0.0.1")
        #expect(budget.unauthenticated == 2)
    }

    @Test(arguments: [64, 1024, 20000, 1 << 20])
    func limitsFromADescriptorLimit_leaveAReserve_andCapUnauthenticatedConnections(descriptors: Int) {
        let limits = ConnectionBudget.Limits.forDescriptorLimit(descriptors)
        #expect(limits.maximumConnections < descriptors)
        #expect(descriptors - limits.maximumConnections >= min(64, descriptors / 2))
        #expect(limits.maximumUnauthenticated <= 1024 && limits.maximumUnauthenticated <= limits.maximumConnections)
        #expect(
            limits.maximumUnauthenticatedPerAddress <= 64
                && limits.maximumUnauthenticatedPerAddress <= limits.maximumUnauthenticated)
    }
}

import ControlPlane
import Testing

/// How a client finds the leader of a set of coordinators: referrals followed, the unreachable
/// passed over, and a pause only once every address has had its turn.
@Suite("Coordinator addresses")
struct CoordinatorAddressesTests {
    static let a = ControlAddress(host: "10.0.0.1", port: 7600)
    static let b = ControlAddress(host: "10.0.0.2", port: 7600)
    static let c = ControlAddress(host: "10.0.0.3", port: 7600)

    @Test func test_aListOfAddresses_parses_andAMalformedOneIsRefused() throws {
        #expect(try CoordinatorAddresses(parsing: "10.0.0.1:7600, 10.0.0.2:7600").all == [Self.a, Self.b])
        #expect(throws: ControlAddressError.self) { try CoordinatorAddresses(parsing: "10.0.0.1:7600,nope") }
    }

    @Test func test_aStandbysReferral_isFollowed_withoutAPause() {
        let addresses = CoordinatorAddresses([Self.a, Self.b, Self.c])
        #expect(!addresses.referred(to: Self.c, by: Self.a))
        #expect(addresses.current == Self.c)
    }

    /// The leader was killed: a stays unreachable, and b and c, standbys, still name it until its
    /// lease ends. The client goes a, b, c with no pause, pauses once, and goes round again.
    @Test func test_duringALeaderChange_theDeadLeaderNamedByStandbys_isPassedOver_andTheRoundPausesOnce() {
        let addresses = CoordinatorAddresses([Self.a, Self.b, Self.c])
        var visited: [ControlAddress] = []
        var pauses = 0
        for _ in 0..<6 {
            let address = addresses.current
            visited.append(address)
            let pause =
                address == Self.a
                ? addresses.unreachable(address) : addresses.referred(to: Self.a, by: address)
            if pause { pauses += 1 }
        }
        #expect(visited == [Self.a, Self.b, Self.c, Self.a, Self.b, Self.c])
        #expect(pauses == 2)
        // c now leads, and b says so: the client goes to c.
        #expect(addresses.current == Self.a)
        addresses.unreachable(Self.a)
        #expect(!addresses.referred(to: Self.c, by: Self.b))
        #expect(addresses.current == Self.c)
    }

    @Test func test_twoStandbysNamingEachOther_costAPausePerRound_neverASpin() {
        let addresses = CoordinatorAddresses([Self.a, Self.b])
        var pauses = 0
        for _ in 0..<10 {
            let address = addresses.current
            if addresses.referred(to: address == Self.a ? Self.b : Self.a, by: address) { pauses += 1 }
        }
        #expect(pauses == 5)
    }

    @Test func test_aSessionThatConnected_startsAFreshRound() {
        let addresses = CoordinatorAddresses([Self.a, Self.b, Self.c])
        addresses.unreachable(Self.a)
        addresses.connected(Self.b)
        // a is no longer remembered as unreachable: a referral to it is followed.
        #expect(!addresses.referred(to: Self.a, by: Self.b))
        #expect(addresses.current == Self.a)
    }
}

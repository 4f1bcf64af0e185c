import NIOCore
import NIOHTTP1
import NIOPosix

/// A plain HTTP listener that answers `GET /metrics` with the Prometheus exposition and 404
/// otherwise. It serves only scrapes, so it carries no secrets and needs no TLS.
enum MetricsEndpoint {
    /// Binds `host:port` and serves until the returned channel is closed; `beforeScrape` brings
    /// derived gauges up to date before each exposition.
    static func bind(
        host: String,
        port: Int,
        metrics: CoordinatorMetrics,
        beforeScrape: @escaping @Sendable () -> Void
    ) async throws -> any Channel {
        try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(
                        ScrapeHandler(metrics: metrics, beforeScrape: beforeScrape))
                }
            }
            .bind(host: host, port: port)
            .get()
    }

    final class ScrapeHandler: ChannelInboundHandler, Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        let metrics: CoordinatorMetrics
        let beforeScrape: @Sendable () -> Void

        init(metrics: CoordinatorMetrics, beforeScrape: @escaping @Sendable () -> Void) {
            self.metrics = metrics
            self.beforeScrape = beforeScrape
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard case .head(let request) = Self.unwrapInboundIn(data) else { return }
            let found = request.method == .GET && request.uri.split(separator: "?").first == "/metrics"
            if found { self.beforeScrape() }
            let body = found ? self.metrics.exposition() : "not found: scrape /metrics\n"
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: found ? "text/plain; version=0.0.4" : "text/plain")
            headers.add(name: "Content-Length", value: "\(body.utf8.count)")
            headers.add(name: "Connection", value: "close")
            let head = HTTPResponseHead(version: request.version, status: found ? .ok : .notFound, headers: headers)
            context.write(Self.wrapOutboundOut(.head(head)), promise: nil)
            context.write(Self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
            context.writeAndFlush(Self.wrapOutboundOut(.end(nil))).whenComplete { [context] _ in
                context.close(promise: nil)
            }
        }
    }
}

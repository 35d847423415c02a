/**
 * A TCP proxy on 127.0.0.1 (port picked by the OS) in front of the runtime,
 * so a test can cut a client's connection for real: `cut()` destroys every
 * open connection (the client sees its HTTP/2 session die mid-stream), and
 * while `hold()` is in force new connections wait, unconnected, until
 * `release()`.
 */

import { createConnection, createServer, type Server, type Socket } from "node:net";

export class CuttableProxy {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private held: Socket[] = [];
  private holding = false;
  /** Connections accepted so far. */
  connections = 0;

  private constructor(private readonly targetPort: number) {
    this.server = createServer((client) => this.accept(client));
  }

  /** Listen on 127.0.0.1:0 and forward to 127.0.0.1:`targetPort`. */
  static async start(targetPort: number): Promise<CuttableProxy> {
    const proxy = new CuttableProxy(targetPort);
    await new Promise<void>((resolve) => proxy.server.listen(0, "127.0.0.1", resolve));
    return proxy;
  }

  get port(): number {
    const address = this.server.address();
    if (address === null || typeof address === "string") {
      throw new Error("the proxy is not listening");
    }
    return address.port;
  }

  /** `http://127.0.0.1:<port>` of the proxy. */
  get address(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Destroy every open connection, both sides, at once. */
  cut(): void {
    for (const socket of this.sockets) {
      socket.destroy();
    }
    this.sockets.clear();
  }

  /** Keep new connections waiting (accepted, not forwarded) until `release`. */
  hold(): void {
    this.holding = true;
  }

  /** Forward the waiting connections and every new one. */
  release(): void {
    this.holding = false;
    const waiting = this.held;
    this.held = [];
    for (const client of waiting) {
      this.forward(client);
    }
  }

  async close(): Promise<void> {
    this.cut();
    for (const client of this.held) {
      client.destroy();
    }
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: Socket): void {
    this.connections += 1;
    client.on("error", () => client.destroy());
    if (this.holding) {
      client.pause();
      this.held.push(client);
      return;
    }
    this.forward(client);
  }

  private forward(client: Socket): void {
    if (client.destroyed) {
      return;
    }
    const upstream = createConnection({ host: "127.0.0.1", port: this.targetPort });
    this.sockets.add(client);
    this.sockets.add(upstream);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      this.sockets.delete(client);
      this.sockets.delete(upstream);
    };
    client.on("close", drop);
    upstream.on("close", drop);
    upstream.on("error", drop);
    client.pipe(upstream);
    upstream.pipe(client);
    client.resume();
  }
}

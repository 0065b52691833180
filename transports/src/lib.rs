//! How bytes move: the `TlpLink` abstraction the bridge talks to, and the async vfio-user client.

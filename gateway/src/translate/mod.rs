//! Translation between the APIs meshgate speaks. OpenAI's chat completions is the
//! canonical form every node is assumed to speak; a request in another dialect goes to
//! a node in its own API when the node speaks it, and is translated (request, and
//! answer whole or streamed) when it does not. One module per dialect.

pub mod ollama;

//! Generated code for the example services (helloworld, routeguide, echo,
//! the test probe), shared by the server, the certificate generator and the
//! native client benchmark in `src/bin`.

pub mod helloworld {
    tonic::include_proto!("helloworld");
}

pub mod routeguide {
    tonic::include_proto!("routeguide");
}

pub mod echo {
    tonic::include_proto!("grpc.examples.echo");
}

pub mod probe {
    tonic::include_proto!("resty.test");
}

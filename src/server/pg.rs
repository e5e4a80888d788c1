//! The PostgreSQL wire front (pgwire): one [`Connection`] per socket, each
//! with its own [`Session`]. The simple and extended query protocols and
//! `COPY … FROM STDIN` are served; errors carry their SQLSTATE and leave the
//! connection usable.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{stream, Sink, SinkExt};
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth, SCRAM_ITERATIONS};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata, AuthSource,
    DefaultServerParameterProvider, LoginInfo, Password, ServerParameterProvider, StartupHandler,
};
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    CopyResponse, DataRowEncoder, DescribePortalResponse, DescribeStatementResponse, FieldInfo, QueryResponse,
    Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::data::DataRow;
use pgwire::messages::response::{CommandComplete, TransactionStatus};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use sqlparser::ast::Statement;
use tokio::sync::Mutex;

use crate::db::Database;
use crate::sql::{self, ColumnDesc, Output, Session, SqlError, SqlType, Value};

/// The version clients see in `server_version`.
const SERVER_VERSION: &str = "15.0";

/// One client connection's handlers and session.
pub struct Connection {
    session: Arc<Mutex<Option<Session>>>,
    parser: Arc<Parser>,
    /// SCRAM-SHA-256 authentication, when a password is configured.
    scram: Option<SASLAuthStartupHandler<Parameters>>,
    /// On a node of a Raft group: the group, and the database the session
    /// was opened on (none on a follower).
    group: Option<Membership>,
}

/// A connection's group, and the database its session was opened on.
type Membership = (Arc<dyn Group>, Option<Arc<Database>>);

/// What a node of a Raft group tells its connections (server/cluster.rs).
pub trait Group: Send + Sync {
    /// Whether `db` is the database this node serves writes with now (it
    /// leads, and has not lost its term since it opened it).
    fn serves(&self, db: &Arc<Database>) -> bool;
    /// Where clients should go instead: this node's part, and the leader.
    fn hint(&self) -> String;
}

/// The server's SCRAM verifier for `superuser_password`: the password salted
/// and hashed once at start-up (PBKDF2 is slow on purpose), never stored.
#[derive(Debug)]
pub struct Verifier {
    salt: Vec<u8>,
    salted: Vec<u8>,
}

impl Verifier {
    /// The verifier of `password` with `salt`.
    pub fn new(password: &str, salt: Vec<u8>) -> Arc<Verifier> {
        let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
        Arc::new(Verifier { salt, salted })
    }
}

#[async_trait]
impl AuthSource for Verifier {
    async fn get_password(&self, _login: &LoginInfo) -> PgWireResult<Password> {
        Ok(Password::new(Some(self.salt.clone()), self.salted.clone()))
    }
}

impl Connection {
    /// A connection to `db`. With a `verifier`, clients must prove they know
    /// the password (SCRAM-SHA-256), whatever their address; without one,
    /// every client is trusted.
    pub fn new(db: Arc<Database>, verifier: Option<Arc<Verifier>>) -> Arc<Connection> {
        Self::build(Some(db), verifier, None)
    }

    /// A connection to a node of a Raft group: a session on `db` if the
    /// node leads, and read-only otherwise (it answers the read-only
    /// settings libpq asks about, and refuses every statement with a hint
    /// naming the leader). A session whose node stops leading is closed
    /// (its open transaction rolled back) at its next statement, and the
    /// connection turns read-only.
    pub fn in_group(
        db: Option<Arc<Database>>,
        verifier: Option<Arc<Verifier>>,
        group: Arc<dyn Group>,
    ) -> Arc<Connection> {
        Self::build(db.clone(), verifier, Some((group, db)))
    }

    fn build(db: Option<Arc<Database>>, verifier: Option<Arc<Verifier>>, group: Option<Membership>) -> Arc<Connection> {
        let read_only = db.is_none();
        let session = Arc::new(Mutex::new(db.map(Session::new)));
        let scram = verifier.map(|v| {
            SASLAuthStartupHandler::new(Arc::new(parameters(read_only)))
                .with_scram(ScramAuth::new(v as Arc<dyn AuthSource>))
        });
        Arc::new(Connection { parser: Arc::new(Parser { session: session.clone() }), session, scram, group })
    }

    /// On a node of a Raft group that does not (or no longer) serve this
    /// connection's writes: the answer to `query` instead of running it.
    /// A session left over from when the node led is closed first.
    async fn refusal(&self, session: &mut Option<Session>, query: &str) -> Option<PgWireResult<Vec<Response>>> {
        let (group, db) = self.group.as_ref()?;
        if db.as_ref().is_some_and(|db| group.serves(db)) {
            return None;
        }
        if let Some(session) = session.take() {
            session.close().await;
        }
        Some(read_only_answer(query, &group.hint()))
    }

    /// Ends the session: its open transaction is rolled back.
    pub async fn close(&self) {
        if let Some(session) = self.session.lock().await.take() {
            session.close().await;
        }
    }
}

fn user_error(e: SqlError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(e)))
}

fn error_info(e: SqlError) -> ErrorInfo {
    ErrorInfo::new("ERROR".into(), e.code.into(), e.message)
}

fn closed() -> PgWireError {
    user_error(SqlError::new("08003", "the session is closed"))
}

/// The wire type of a SQL type (NUMERIC travels as float8: see docs/sql.md).
pub fn wire_type(ty: SqlType) -> Type {
    match ty {
        SqlType::SmallInt => Type::INT2,
        SqlType::Int => Type::INT4,
        SqlType::BigInt => Type::INT8,
        SqlType::Real => Type::FLOAT4,
        SqlType::Double | SqlType::Numeric => Type::FLOAT8,
        SqlType::Text(None) => Type::TEXT,
        SqlType::Text(Some(_)) => Type::VARCHAR,
        SqlType::Char(_) => Type::BPCHAR,
        SqlType::Bool => Type::BOOL,
        SqlType::Timestamp => Type::TIMESTAMP,
        SqlType::TimestampTz => Type::TIMESTAMPTZ,
    }
}

fn sql_type(ty: &Type) -> Option<SqlType> {
    Some(match *ty {
        Type::INT2 => SqlType::SmallInt,
        Type::INT4 => SqlType::Int,
        Type::INT8 => SqlType::BigInt,
        Type::FLOAT4 => SqlType::Real,
        Type::FLOAT8 | Type::NUMERIC => SqlType::Double,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => SqlType::Text(None),
        Type::BOOL => SqlType::Bool,
        Type::TIMESTAMP => SqlType::Timestamp,
        Type::TIMESTAMPTZ => SqlType::TimestampTz,
        _ => return None,
    })
}

fn fields(columns: &[ColumnDesc], format: &Format) -> Arc<Vec<FieldInfo>> {
    Arc::new(
        columns
            .iter()
            .enumerate()
            .map(|(i, c)| FieldInfo::new(c.name.clone(), None, None, wire_type(c.ty), format.format_for(i)))
            .collect(),
    )
}

fn encode_row(schema: &Arc<Vec<FieldInfo>>, columns: &[ColumnDesc], row: Vec<Value>) -> PgWireResult<DataRow> {
    let mut encoder = DataRowEncoder::new(schema.clone());
    for (value, column) in row.into_iter().zip(columns) {
        let value = column.ty.coerce(value).map_err(user_error)?;
        match (value, column.ty) {
            (Value::Null, _) => encoder.encode_field(&None::<i64>)?,
            (Value::Int(n), SqlType::SmallInt) => encoder.encode_field(&(n as i16))?,
            (Value::Int(n), SqlType::Int) => encoder.encode_field(&(n as i32))?,
            (Value::Int(n), _) => encoder.encode_field(&n)?,
            (Value::Float(x), SqlType::Real) => encoder.encode_field(&(x as f32))?,
            (Value::Float(x), _) => encoder.encode_field(&x)?,
            (Value::Bool(b), _) => encoder.encode_field(&b)?,
            (Value::Text(s), _) => encoder.encode_field(&s)?,
            (Value::Timestamp(t), ty) => {
                let at = chrono::DateTime::from_timestamp_micros(t).unwrap_or_default();
                if ty == SqlType::TimestampTz {
                    encoder.encode_field(&at)?
                } else {
                    encoder.encode_field(&at.naive_utc())?
                }
            }
        }
    }
    encoder.finish()
}

fn rows_response(command: &str, columns: Vec<ColumnDesc>, rows: Vec<Vec<Value>>, format: &Format) -> Response {
    let schema = fields(&columns, format);
    let encoded: Vec<PgWireResult<DataRow>> = rows.into_iter().map(|r| encode_row(&schema, &columns, r)).collect();
    let mut response = QueryResponse::new(schema, stream::iter(encoded));
    response.set_command_tag(command);
    Response::Query(response)
}

fn response(output: Output, format: &Format) -> Response {
    match output {
        Output::Rows { command, columns, rows } => rows_response(command, columns, rows, format),
        Output::Command(tag) => Response::Execution(Tag::new(&tag)),
        Output::Begin => Response::TransactionStart(Tag::new("BEGIN")),
        Output::End(tag) => Response::TransactionEnd(Tag::new(tag)),
        Output::CopyIn { columns } => Response::CopyIn(CopyResponse::new(0, columns, vec![0; columns])),
    }
}

#[async_trait]
impl SimpleQueryHandler for Connection {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut guard = self.session.lock().await;
        if let Some(answer) = self.refusal(&mut guard, query).await {
            return answer;
        }
        let session = guard.as_mut().ok_or_else(closed)?;
        let (outputs, error) = session.run(query).await;
        let mut responses: Vec<Response> = outputs.into_iter().map(|out| response(out, &Format::UnifiedText)).collect();
        if let Some(e) = error {
            responses.push(Response::Error(Box::new(error_info(e))));
        }
        Ok(responses)
    }
}

/// A prepared statement: its text, parsed, with the parameter types and
/// result columns found when it was parsed (if its tables existed then).
#[derive(Debug, Clone)]
pub struct Prepared {
    statement: Option<Statement>,
    described: Option<(Vec<SqlType>, Vec<ColumnDesc>)>,
}

/// Parses and describes statements for the extended protocol.
pub struct Parser {
    session: Arc<Mutex<Option<Session>>>,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(&self, _client: &C, sql: &str, types: &[Option<Type>]) -> PgWireResult<Prepared>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = sql::parse(sql).map_err(user_error)?;
        if statements.len() > 1 {
            return Err(user_error(SqlError::syntax("cannot insert multiple commands into a prepared statement")));
        }
        let Some(statement) = statements.pop() else { return Ok(Prepared { statement: None, described: None }) };
        let declared: Vec<Option<SqlType>> = types.iter().map(|t| t.as_ref().and_then(sql_type)).collect();
        // A statement on a table that does not exist yet is described again
        // when it runs; one without a session (a read-only node's) is
        // answered when it runs.
        let described = match self.session.lock().await.as_mut() {
            Some(session) => session.describe(&statement, &declared).await.ok(),
            None => None,
        };
        Ok(Prepared { statement: Some(statement), described })
    }
}

impl Connection {
    async fn described(
        &self,
        prepared: &Prepared,
        declared: &[Option<Type>],
    ) -> PgWireResult<(Vec<SqlType>, Vec<ColumnDesc>)> {
        if let Some(d) = &prepared.described {
            return Ok(d.clone());
        }
        let Some(statement) = &prepared.statement else { return Ok((Vec::new(), Vec::new())) };
        let declared: Vec<Option<SqlType>> = declared.iter().map(|t| t.as_ref().and_then(sql_type)).collect();
        let mut guard = self.session.lock().await;
        if let Some(answer) = self.refusal(&mut guard, &statement.to_string()).await {
            // Described as nothing; what it is told comes when it runs.
            return answer.map(|_| (Vec::new(), Vec::new()));
        }
        let session = guard.as_mut().ok_or_else(closed)?;
        session.describe(statement, &declared).await.map_err(user_error)
    }
}

fn parameter(portal: &Portal<Prepared>, i: usize, ty: SqlType) -> PgWireResult<Value> {
    let wire = wire_type(ty);
    let wire = if portal.parameter_format.is_binary(i) { wire } else { Type::TEXT };
    Ok(match sql_type(&wire).unwrap_or(SqlType::Text(None)) {
        SqlType::SmallInt => portal.parameter::<i16>(i, &wire)?.map_or(Value::Null, |v| Value::Int(v.into())),
        SqlType::Int => portal.parameter::<i32>(i, &wire)?.map_or(Value::Null, |v| Value::Int(v.into())),
        SqlType::BigInt => portal.parameter::<i64>(i, &wire)?.map_or(Value::Null, Value::Int),
        SqlType::Real => portal.parameter::<f32>(i, &wire)?.map_or(Value::Null, |v| Value::Float(v.into())),
        SqlType::Double | SqlType::Numeric => portal.parameter::<f64>(i, &wire)?.map_or(Value::Null, Value::Float),
        SqlType::Bool => portal.parameter::<bool>(i, &wire)?.map_or(Value::Null, Value::Bool),
        SqlType::Timestamp => portal
            .parameter::<chrono::NaiveDateTime>(i, &wire)?
            .map_or(Value::Null, |t| Value::Timestamp(t.and_utc().timestamp_micros())),
        SqlType::TimestampTz => portal
            .parameter::<chrono::DateTime<chrono::FixedOffset>>(i, &wire)?
            .map_or(Value::Null, |t| Value::Timestamp(t.timestamp_micros())),
        SqlType::Text(_) | SqlType::Char(_) => portal.parameter::<String>(i, &wire)?.map_or(Value::Null, Value::Text),
    })
}

#[async_trait]
impl ExtendedQueryHandler for Connection {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        target: &StoredStatement<Prepared>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (params, columns) = self.described(&target.statement, &target.parameter_types).await?;
        let params = params.into_iter().map(wire_type).collect();
        let fields = fields(&columns, &Format::UnifiedText);
        Ok(DescribeStatementResponse::new(params, fields.to_vec()))
    }

    async fn do_describe_portal<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Prepared>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (_, columns) = self.described(&portal.statement.statement, &portal.statement.parameter_types).await?;
        Ok(DescribePortalResponse::new(fields(&columns, &portal.result_column_format).to_vec()))
    }

    async fn do_query<C>(&self, _client: &mut C, portal: &Portal<Prepared>, _max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement;
        let Some(statement) = &prepared.statement else { return Ok(Response::EmptyQuery) };
        if let Some(answer) = self.refusal(&mut *self.session.lock().await, &statement.to_string()).await {
            return match answer?.pop() {
                Some(Response::Error(info)) => Err(PgWireError::UserError(info)),
                Some(response) => Ok(response),
                None => Ok(Response::EmptyQuery),
            };
        }
        let (types, _) = self.described(prepared, &portal.statement.parameter_types).await?;
        let params = (0..portal.parameter_len())
            .map(|i| parameter(portal, i, types.get(i).copied().unwrap_or(SqlType::Text(None))))
            .collect::<PgWireResult<Vec<_>>>()?;
        let mut guard = self.session.lock().await;
        let session = guard.as_mut().ok_or_else(closed)?;
        let output = session.execute(statement, &params).await.map_err(user_error)?;
        Ok(response(output, &portal.result_column_format))
    }
}

#[async_trait]
impl CopyHandler for Connection {
    async fn on_copy_data<C>(&self, _client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut guard = self.session.lock().await;
        guard.as_mut().ok_or_else(closed)?.copy_data(&copy_data.data).await;
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let result = {
            let mut guard = self.session.lock().await;
            let session = guard.as_mut().ok_or_else(closed)?;
            let result = session.copy_done().await;
            // The status the next ReadyForQuery reports (see wire::serve).
            client.set_transaction_status(match session.in_block() {
                (false, _) => TransactionStatus::Idle,
                (true, false) => TransactionStatus::Transaction,
                (true, true) => TransactionStatus::Error,
            });
            result
        };
        match result {
            Ok(Output::Command(tag)) => {
                client.send(PgWireBackendMessage::CommandComplete(CommandComplete::new(tag))).await?;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(user_error(e)),
        }
    }

    async fn on_copy_fail<C>(&self, _client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut guard = self.session.lock().await;
        match guard.as_mut() {
            Some(session) => user_error(session.copy_fail(&fail.message).await),
            None => closed(),
        }
    }
}

/// The parameters every client is told at start-up.
pub struct Parameters(DefaultServerParameterProvider, bool);

// pgwire's trait returns a HashMap; its order does not matter (each entry
// becomes its own ParameterStatus message).
#[allow(clippy::disallowed_types)]
impl ServerParameterProvider for Parameters {
    fn server_parameters<C>(&self, client: &C) -> Option<std::collections::HashMap<String, String>>
    where
        C: ClientInfo,
    {
        let mut parameters = self.0.server_parameters(client)?;
        // PostgreSQL 14+ reports these, and libpq reads them for
        // `target_session_attrs` (read-write, primary, standby): a server
        // that serves writes is a primary; a follower of a Raft group is
        // in hot standby.
        let flag = if self.1 { "on" } else { "off" };
        parameters.insert("in_hot_standby".into(), flag.into());
        parameters.insert("default_transaction_read_only".into(), flag.into());
        Some(parameters)
    }
}

fn parameters(read_only: bool) -> Parameters {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = SERVER_VERSION.into();
    p.time_zone = "UTC".into();
    Parameters(p, read_only)
}

/// A read-only node's answer to `query`: the read-only settings libpq and
/// drivers ask about are `on`, transaction control and settings are
/// accepted (there is nothing to do), and every other statement is refused
/// with `hint`: a write with SQLSTATE 25006, as PostgreSQL's hot standby
/// does, and a read with 0A000, since a follower's database is not open.
fn read_only_answer(query: &str, hint: &str) -> PgWireResult<Vec<Response>> {
    let words: Vec<String> = query
        .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter(|w| !w.is_empty())
        .take(2)
        .map(str::to_ascii_uppercase)
        .collect();
    let first = words.first().map_or("", String::as_str);
    let second = words.get(1).map_or("", String::as_str);
    match first {
        "" => return Ok(vec![Response::EmptyQuery]),
        "SHOW" if matches!(second, "TRANSACTION_READ_ONLY" | "DEFAULT_TRANSACTION_READ_ONLY" | "IN_HOT_STANDBY") => {
            let column = ColumnDesc { name: second.to_ascii_lowercase(), ty: SqlType::Text(None) };
            let rows = vec![vec![Value::Text("on".into())]];
            return Ok(vec![rows_response("SHOW", vec![column], rows, &Format::UnifiedText)]);
        }
        "BEGIN" | "START" => return Ok(vec![Response::TransactionStart(Tag::new("BEGIN"))]),
        "COMMIT" | "END" => return Ok(vec![Response::TransactionEnd(Tag::new("COMMIT"))]),
        "ROLLBACK" | "ABORT" => return Ok(vec![Response::TransactionEnd(Tag::new("ROLLBACK"))]),
        "SET" | "RESET" | "DISCARD" => return Ok(vec![Response::Execution(Tag::new(first))]),
        _ => {}
    }
    let reads = ["SELECT", "SHOW", "WITH", "VALUES", "TABLE", "EXPLAIN"];
    let (code, message) = if reads.contains(&first) {
        ("0A000", format!("cannot execute {first} here: this node does not serve reads"))
    } else {
        ("25006", format!("cannot execute {first} in a read-only transaction"))
    };
    let mut info = ErrorInfo::new("ERROR".into(), code.into(), message);
    info.hint = Some(hint.to_string());
    Ok(vec![Response::Error(Box::new(info))])
}

#[async_trait]
impl StartupHandler for Connection {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(scram) = &self.scram {
            return scram.on_startup(client, message).await;
        }
        if let PgWireFrontendMessage::Startup(ref startup) = message {
            protocol_negotiation(client, startup).await?;
            save_startup_parameters_to_metadata(client, startup);
            let read_only = self.group.as_ref().is_some_and(|(_, db)| db.is_none());
            finish_authentication(client, &parameters(read_only)).await?;
        }
        Ok(())
    }
}

/// The handlers pgwire asks for, all served by one connection.
pub struct Handlers(pub Arc<Connection>);

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.0.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.0.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.0.clone()
    }

    fn copy_handler(&self) -> Arc<impl CopyHandler> {
        self.0.clone()
    }
}

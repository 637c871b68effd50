package wardstream.hapi;

import ca.uhn.hl7v2.DefaultHapiContext;
import ca.uhn.hl7v2.HapiContext;
import ca.uhn.hl7v2.app.Connection;
import ca.uhn.hl7v2.app.Initiator;
import ca.uhn.hl7v2.model.Message;
import ca.uhn.hl7v2.parser.Parser;
import ca.uhn.hl7v2.util.Terser;
import ca.uhn.hl7v2.validation.impl.ValidationContextFactory;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * Sends the HL7 v2 messages of a file to an MLLP listener with HAPI's client, one at a time,
 * each after the previous one's ACK (as interface engines do), and prints one line per ACK:
 * {@code MSA-1 MSA-2 MSH-9} (tab-separated), or {@code ERROR <control id> <reason>}.
 *
 * <p>File format: one segment per line, messages separated by a blank line.
 *
 * <p>With {@code RETRIES} > 0 a message answered AE, or not answered, is sent again after a
 * second (on a new connection when the listener closed it), up to {@code RETRIES} more times, as
 * interface engines retry; every attempt's line is printed.
 *
 * <p>Usage: {@code java -cp ... wardstream.hapi.Sender HOST PORT FILE [TIMEOUT_S [RETRIES]]}
 */
public final class Sender {
    public static void main(String[] args) throws Exception {
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        List<String> messages = readMessages(Path.of(args[2]));
        long timeoutS = args.length > 3 ? Long.parseLong(args[3]) : 30;
        int retries = args.length > 4 ? Integer.parseInt(args[4]) : 0;

        try (HapiContext ctx = new DefaultHapiContext()) {
            // the listener, not this sender, judges the messages: send non-ADT and A08 as they are
            ctx.setValidationContext(ValidationContextFactory.noValidation());
            Parser parser = ctx.getGenericParser();
            Connection connection = ctx.newClient(host, port, false);
            for (String text : messages) {
                Message message = parser.parse(text);
                String controlId = new Terser(message).get("/MSH-10");
                for (int attempt = 0; attempt <= retries; attempt++) {
                    if (attempt > 0) {
                        Thread.sleep(1000);
                        if (!connection.isOpen()) {
                            connection = reconnect(ctx, host, port);
                        }
                    }
                    String answer;
                    try {
                        Initiator initiator = connection.getInitiator();
                        initiator.setTimeout(timeoutS, TimeUnit.SECONDS);
                        Terser t = new Terser(initiator.sendAndReceive(message));
                        answer = t.get("/MSA-1") + "\t" + t.get("/MSA-2") + "\t"
                                + t.get("/MSH-9-1") + "^" + t.get("/MSH-9-2") + "^" + t.get("/MSH-9-3");
                    } catch (Exception e) {
                        answer = "ERROR\t" + controlId + "\t" + e.getClass().getSimpleName();
                    }
                    System.out.println(answer);
                    System.out.flush();
                    if (!answer.startsWith("AE") && !answer.startsWith("ERROR")) {
                        break;
                    }
                }
            }
            connection.close();
        }
    }

    /** A new connection, waiting up to a minute for the listener to accept it. */
    static Connection reconnect(HapiContext ctx, String host, int port) throws Exception {
        for (int i = 0; ; i++) {
            try {
                return ctx.newClient(host, port, false);
            } catch (Exception e) {
                if (i >= 60) {
                    throw e;
                }
                Thread.sleep(1000);
            }
        }
    }

    static List<String> readMessages(Path file) throws Exception {
        List<String> messages = new ArrayList<>();
        StringBuilder current = new StringBuilder();
        for (String line : Files.readAllLines(file, StandardCharsets.UTF_8)) {
            if (line.isBlank()) {
                if (current.length() > 0) {
                    messages.add(current.toString());
                    current.setLength(0);
                }
            } else {
                current.append(line.strip()).append('\r');
            }
        }
        if (current.length() > 0) {
            messages.add(current.toString());
        }
        return messages;
    }
}
